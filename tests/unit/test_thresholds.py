"""Decision thresholds for every model: policies, the normalised score, decisions, and validation images that are
also in the bank (scored without their own entries)."""
import numpy as np
import pytest

import src  # noqa: F401
from src.evaluation.metrics import DECISION_KEYS, decision_metrics
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.memory_bank import MemoryBank
from src.decisions.thresholds import choose_thresholds, parse_threshold_policy
from src.patchcore.normalization import ScoreNormalizer
from src.training.validation import build_validation_set
from src.utils.errors import InputError


@pytest.mark.parametrize("policy, expected", [("f1", ("f1", None)), ("fpr:0.05", ("fpr", 0.05)),
                                              ("manual:12.5", ("manual", 12.5)), (" fpr:0.5 ", ("fpr", 0.5))])
def test_threshold_policies_parse(policy, expected):
    assert parse_threshold_policy(policy) == expected


@pytest.mark.parametrize("policy", ["f2", "fpr:0", "fpr:1", "fpr:x", "manual:nan", "manual:", "f1:3"])
def test_bad_threshold_policies_are_input_errors(policy):
    with pytest.raises(InputError, match="postprocess.threshold"):
        parse_threshold_policy(policy)


def test_each_policy_sets_the_image_threshold_as_documented():
    normal = np.linspace(0.0, 1.0, 101)
    anomalous = np.array([2.0, 3.0])
    f1 = choose_thresholds(normal, anomalous)
    assert 1.0 < f1.image <= 2.0 and f1.image_method == "max_f1"      # between the classes
    fpr = choose_thresholds(normal, anomalous, policy="fpr:0.1")
    assert fpr.image == pytest.approx(np.quantile(normal, 0.9)) and fpr.image_method == "fpr:0.1"
    manual = choose_thresholds(normal, anomalous, policy="manual:0.25")
    assert manual.image == 0.25 and manual.image_method == "manual:0.25"


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


def test_decision_metrics_count_what_the_threshold_flags():
    scores = [0.1, 0.2, 0.6, 0.7, 0.4, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    masks = [np.zeros((4, 4), np.uint8)] * 3 + [np.eye(4, dtype=np.uint8)] * 3
    maps = [m.astype(np.float32) * 0.9 for m in masks]
    metrics = decision_metrics(scores, labels, maps, masks, {"image": 0.5, "pixel": 0.5},
                               ["good", "good", "good", "cut", "cut", "hole"])
    assert set(DECISION_KEYS) <= set(metrics)
    assert metrics["image_recall"] == pytest.approx(2 / 3) and metrics["image_fpr"] == pytest.approx(1 / 3)
    assert metrics["image_precision"] == pytest.approx(2 / 3) and metrics["image_f1_at_threshold"] == pytest.approx(2 / 3)
    assert metrics["pixel_f1_at_threshold"] == 1.0
    assert metrics["recall_per_defect_type"] == {"cut": 0.5, "hole": 1.0}
    assert decision_metrics(scores, labels, maps, masks, None) == {}


def test_a_zero_share_keeps_every_image_for_training_and_draws_validation_images():
    images = [np.full((8, 8, 3), v, np.uint8) for v in range(12)]
    drawn = build_validation_set(images, ["RandomBox"], 0, seed=3, anomaly_ratio=0.5, val_images=6)
    assert drawn.train_indices == list(range(12)) and not drawn.held_out
    # each of the 6 drawn images twice: as it is and with an anomaly, so 6 + 6 whatever the share
    assert len(drawn.items) == 12 and sorted(item.label for item in drawn.items) == [0] * 6 + [1] * 6
    assert [item.source_index for item in drawn.items if item.label] == \
        [item.source_index for item in drawn.items if not item.label]
    assert all(item.bank_source == item.source_index for item in drawn.items)
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
    without_zero = detector.patch_scores(features, exclude_source=0)[:, 0, 0]
    rest = rows[2:]
    expected = ((rows[0] - rest) ** 2).sum(1).min()
    assert without_zero[0] == pytest.approx(expected, rel=1e-5) and without_zero[1] == pytest.approx(0, abs=1e-6)
    assert np.array_equal(detector.patch_scores(features, exclude_source=9), detector.patch_scores(features))
