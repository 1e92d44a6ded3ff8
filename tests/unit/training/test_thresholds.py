"""src/training/thresholds.py and validation.py: the normalised score of every model, and validation images that are
also in the bank (scored without their own entries, or their fold's, one exclusion after the other)."""
import numpy as np
import pytest

import src  # noqa: F401
from src.data.sample import Sample
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.memory_bank import MemoryBank
from src.patchcore.normalization import ScoreNormalizer
from src.training.thresholds import validation_batches
from src.training.validation import LabelledItem, build_validation_set


def test_the_normalised_score_puts_the_threshold_at_one_half_and_keeps_the_order():
    normal = np.array([1.0, 2.0, 3.0])
    normalizer = ScoreNormalizer.at_threshold(normal, 5.0)
    assert normalizer.transform(np.array([5.0]))[0] == pytest.approx(0.5)
    assert normalizer.transform(np.array([2.0]))[0] == pytest.approx(0.05)
    values = normalizer.transform(np.array([0.0, 2.0, 4.9, 5.1, 50.0]))
    assert np.all(np.diff(values) > 0) and values.min() > 0 and values.max() < 1
    assert ScoreNormalizer.from_dict(normalizer.to_dict()) == normalizer
    below = ScoreNormalizer.at_threshold(normal, 1.0)     # a threshold under the normal median: still 0.5 there
    assert below.transform(np.array([1.0]))[0] == pytest.approx(0.5) and below.low <= below.high


def test_a_zero_share_keeps_every_image_for_training_and_draws_validation_images():
    images = [np.full((8, 8, 3), v, np.uint8) for v in range(12)]
    drawn = build_validation_set(images, ["RandomBox"], 0, seed=3, anomaly_ratio=0.5, val_images=6)
    assert drawn.train_indices == list(range(12)) and not drawn.held_out
    # each of the 6 drawn images twice: as it is and with an anomaly, so 6 + 6 whatever the share
    assert len(drawn.items) == 12 and sorted(item.label for item in drawn.items) == [0] * 6 + [1] * 6
    assert [item.source_index for item in drawn.items if item.label] == \
        [item.source_index for item in drawn.items if not item.label]
    assert all(item.excluded_sources == (item.source_index,) for item in drawn.items)
    only_normal = build_validation_set(images, [], 0, seed=3, anomaly_ratio=0, val_images=6)
    assert [item.label for item in only_normal.items] == [0] * 6
    again = build_validation_set(images, ["RandomBox"], 0, seed=3, anomaly_ratio=0.5, val_images=6)
    assert [item.source_index for item in again.items] == [item.source_index for item in drawn.items]
    held = build_validation_set(images, ["RandomBox"], 0.25, seed=3)
    assert held.held_out and not set(held.train_indices) & {item.source_index for item in held.items}


def test_a_validation_image_in_the_bank_is_scored_without_its_own_entries():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 4)).astype(np.float32)
    detector = PatchCoreDetector({"anomaly_scorer_num_nn": 1})
    detector.bank = MemoryBank.from_features(rows, {"sources": [0, 0, 1, 1, 2, 2]})
    features = rows[[0, 3]].reshape(2, 4, 1, 1)          # two patches, equal to entries of images 0 and 1
    assert np.allclose(detector.patch_scores(features)[:, 0, 0], 0)
    without_zero = detector.patch_scores(features, exclude_sources=(0,))[:, 0, 0]
    rest = rows[2:]
    expected = ((rows[0] - rest) ** 2).sum(1).min()
    assert without_zero[0] == pytest.approx(expected, rel=1e-5) and without_zero[1] == pytest.approx(0, abs=1e-6)
    assert np.array_equal(detector.patch_scores(features, exclude_sources=(9,)), detector.patch_scores(features))


def test_items_with_the_same_exclusion_are_scored_in_consecutive_batches_and_keep_their_positions():
    images = [np.full((8, 8, 3), v, np.uint8) for v in range(9)]
    drawn = build_validation_set(images, ["RandomBox"], 0, seed=1, anomaly_ratio=0.5, val_images=6, folds=3)
    items = drawn.items + [LabelledItem(Sample(images[0], label=0)) for _ in range(3)]
    batches = list(validation_batches(items, 3))
    assert sorted(position for batch, _ in batches for position, _ in batch) == list(range(len(items)))
    assert all(len(batch) <= 3 and all(items[position] is item and item.excluded_sources == excluded
                                       for position, item in batch) for batch, excluded in batches)
    exclusions = [excluded for _, excluded in batches]
    assert None in exclusions and set(exclusions) - {None} <= set(drawn.folds)
    assert all(now == before or now not in exclusions[:k] for k, (before, now) in
               enumerate(zip(exclusions, exclusions[1:]), 1))   # one run of batches per exclusion
