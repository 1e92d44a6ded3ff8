"""src/training/validation.py: the validation set drawn from the normal training images, and its folds."""
import collections
import json

import numpy as np
import pytest

import src  # noqa: F401
from conftest import changed_pixels, noise_image, write_png
from src.data.sample import HRSample
from src.data.synthesizers import SYNTHESIZERS, ColorShift
from src.training.validation import build_validation_set, split_folds
from src.utils.errors import InputError


NAMES = sorted(SYNTHESIZERS)


def test_validation_split_sizes_and_partition():
    images = [noise_image(i, 16, 16) for i in range(10)]
    split = build_validation_set(images, ["RandomBox"], val_sample_ratio=0.2, seed=0)
    val_indices = [item.source_index for item in split.items]
    assert len(val_indices) == 2 and len(split.train_indices) == 8
    assert sorted(val_indices + split.train_indices) == list(range(10))
    assert sorted(item.label for item in split.items) == [0, 1]
    capped = build_validation_set(images, ["RandomBox"], val_sample_ratio=0.9, seed=0, max_items=3)
    assert len(capped.items) == 3
    tiny = build_validation_set(images[:2], ["RandomBox"], val_sample_ratio=0.01, seed=0)
    assert len(tiny.items) == 1 and len(tiny.train_indices) == 1   # at least one held out, never all


def test_validation_split_is_seeded():
    images = [noise_image(i, 16, 16) for i in range(20)]
    def run(seed):
        split = build_validation_set(images, NAMES, val_sample_ratio=0.3, seed=seed)
        return [(item.describe(), *item.load()) for item in split.items]
    first, again = run(3), run(3)
    assert [d for d, *_ in first] == [d for d, *_ in again]
    assert all(np.array_equal(a, b) for (_, *x), (_, *y) in zip(first, again) for a, b in zip(x, y))
    splits = {tuple(d["source_index"] for d, *_ in run(seed)) for seed in range(5)}
    assert len(splits) > 1


def test_synthesizers_are_used_round_robin():
    images = [noise_image(i, 12, 12) for i in range(81)]
    split = build_validation_set(images, NAMES, val_sample_ratio=0.5, seed=1, anomaly_ratio=1.0)
    assert len(split.items) == 40 and all(item.label == 1 for item in split.items)
    assert collections.Counter(item.describe()["synthesizer"] for item in split.items) == {name: 5 for name in NAMES}


def test_validation_items_load_from_arrays_samples_and_paths(tmp_path):
    arrays = [noise_image(i, 20, 24) for i in range(4)]
    write_png(tmp_path / "x.png", arrays[2])
    inputs = [arrays[0], HRSample(arrays[1]), str(tmp_path / "x.png"), arrays[3]]
    split = build_validation_set(inputs, [ColorShift(min_size=3)], val_sample_ratio=0.75, seed=2)
    assert len(split.items) == 3 and sorted(item.label for item in split.items) == [0, 1, 1]
    for item in split.items:
        source = arrays[item.source_index]
        image, mask = item.load()
        assert np.array_equal(mask.astype(bool), changed_pixels(source, image))
        assert mask.any() == bool(item.label)
        sample = item.to_sample()
        assert sample.label == item.label
        assert np.array_equal(sample.load_image(), image) and np.array_equal(sample.load_mask(), mask)


@pytest.mark.parametrize("kwargs", [dict(val_sample_ratio=-0.1), dict(val_sample_ratio=1.0), dict(anomaly_ratio=1.2),
                                    dict(max_items=0), dict(synthesizers=[]), dict(synthesizers=["Nope"]),
                                    dict(synthesizers=[3])])
def test_validation_set_bad_arguments(kwargs):
    arguments = dict(images_or_samples=[noise_image(i, 8, 8) for i in range(4)], synthesizers=["RandomBox"])
    with pytest.raises(InputError):
        build_validation_set(**{**arguments, **kwargs})


def test_validation_set_needs_two_valid_images():
    with pytest.raises(InputError, match="at least 2"):
        build_validation_set([noise_image(0, 8, 8)], ["RandomBox"])
    with pytest.raises(InputError):
        build_validation_set([noise_image(0, 8, 8), np.zeros((8, 8), np.uint8)], ["RandomBox"])


# What build_validation_set gave before val_config.folds existed (commit 5492b7c) for 9 flat images, RandomBox and
# Scratch, val_sample_ratio 0, seed 7, anomaly_ratio 0.5, val_images 4: folds null must keep it byte for byte.
LEAVE_OWN_OUT_RECORDS = [
    {"source_index": 0, "label": 0, "synthesizer": None, "in_bank": True},
    {"source_index": 0, "label": 1, "synthesizer": "Scratch", "in_bank": True},
    {"source_index": 1, "label": 0, "synthesizer": None, "in_bank": True},
    {"source_index": 1, "label": 1, "synthesizer": "Scratch", "in_bank": True},
    {"source_index": 7, "label": 0, "synthesizer": None, "in_bank": True},
    {"source_index": 7, "label": 1, "synthesizer": "RandomBox", "in_bank": True},
    {"source_index": 8, "label": 0, "synthesizer": None, "in_bank": True},
    {"source_index": 8, "label": 1, "synthesizer": "RandomBox", "in_bank": True}]


def flat_images(count):
    return [np.full((8, 8, 3), value, np.uint8) for value in range(count)]


def test_without_folds_the_items_are_those_drawn_before_folds_existed():
    drawn = build_validation_set(flat_images(9), ["RandomBox", "Scratch"], 0, seed=7, anomaly_ratio=0.5,
                                 val_images=4)
    assert json.dumps([item.describe() for item in drawn.items]) == json.dumps(LEAVE_OWN_OUT_RECORDS)
    assert [item.excluded_sources for item in drawn.items] == [(0,), (0,), (1,), (1,), (7,), (7,), (8,), (8,)]
    assert drawn.folds is None


def test_folds_partition_the_training_images_by_seed_and_each_item_excludes_its_fold():
    images = flat_images(10)

    def draw(seed, folds):
        return build_validation_set(images, ["RandomBox", "Scratch"], 0, seed=seed, val_images=5, folds=folds)
    drawn = draw(4, 3)
    assert sorted(position for fold in drawn.folds for position in fold) == list(range(10))   # a partition
    assert sorted(len(fold) for fold in drawn.folds) == [3, 3, 4] and all(list(f) == sorted(f) for f in drawn.folds)
    assert draw(4, 3).folds == drawn.folds == split_folds(10, 3, 4)
    assert any(draw(seed, 3).folds != drawn.folds for seed in range(5, 9))
    for item in drawn.items:
        assert item.excluded_sources == drawn.folds[item.fold] and item.source_index in item.excluded_sources
        record = item.describe()
        assert record["fold"] == item.fold and record["excluded_sources"] == list(drawn.folds[item.fold])
    plain = draw(4, None)   # the same items drawn, only scored without more
    assert [{k: v for k, v in item.describe().items() if k not in ("fold", "excluded_sources")}
            for item in drawn.items] == [item.describe() for item in plain.items]
    assert all(np.array_equal(a, b) for x, y in zip(drawn.items, plain.items) for a, b in zip(x.load(), y.load()))


@pytest.mark.parametrize("kwargs, needle", [(dict(folds=1), "at least 2"), (dict(folds=0), "positive integer"),
                                            (dict(folds=2.0), "positive integer"),
                                            (dict(folds=5), "5 folds for 4 training images"),
                                            (dict(folds=2, val_sample_ratio=0.5), "needs val_sample_ratio 0")])
def test_bad_folds_are_one_line_errors_naming_the_setting(kwargs, needle):
    with pytest.raises(InputError, match=needle) as caught:
        build_validation_set(**{"images_or_samples": flat_images(4), "synthesizers": ["RandomBox"],
                                "val_sample_ratio": 0, **kwargs})
    assert str(caught.value).startswith("val_config.folds: ") and "\n" not in str(caught.value)


def test_training_with_folds_records_them_and_scores_in_bank_images_without_their_folds_entries(tmp_path):
    """Six 64x64 images, four 32-pixel tiles (one task each); the reweighted image score, so the thresholds score
    the validation images through the model (the jobs' stored grids are not enough) and the jobs score their tiles."""
    from src.tiling.plan import MultiResolutionHRImageSpliter
    from src.tiling.tasks import O2OTaskGenerator
    from src.training.hiad import HRTrainer
    samples = [HRSample(noise_image(k, 64, 64)) for k in range(6)]
    plan = MultiResolutionHRImageSpliter(64, 32)
    config = {"patch": {"backbone_name": "mobilenet_v2", "layers_to_extract_from": ["features.6", "features.13"],
                        "percentage": 0.5, "pretrain_embed_dimension": 32, "target_embed_dimension": 32},
              "image_score": {"policy": "reweighted"}}

    def train(folds):
        folder = tmp_path / str(folds)
        trainer = HRTrainer(batch_size=4, tasks=O2OTaskGenerator().create_tasks(samples, plan), config=config,
                            checkpoint_root=str(folder), log_root=str(folder / "logs"), vis_root=None)
        val_config = {"anomaly_syn_fn": ["RandomBox"], "val_sample_ratio": 0, "val_images": 3, "folds": folds}
        return trainer.train(samples, val_config=val_config, workers=1, seed=0)["validation"]
    k_fold, leave_own_out = train(3), train(None)
    assert (k_fold["scheme"], k_fold["folds"], k_fold["held_out"]) == ("k_fold", 3, False)
    assert leave_own_out["scheme"] == "leave_own_out" and "folds" not in leave_own_out
    folds = split_folds(6, 3, 0)
    assert [record["excluded_sources"] for record in k_fold["items"]] == \
        [list(folds[record["fold"]]) for record in k_fold["items"]]
    assert all(len(record["excluded_sources"]) == 2 for record in k_fold["items"])
    assert [record["source_index"] for record in k_fold["items"]] == \
        [record["source_index"] for record in leave_own_out["items"]]
    # the same banks; the fold's other image matters (by 2e-3 relative here; float noise is ~1e-5)
    differences = [abs(a["score"] / b["score"] - 1) for a, b in zip(k_fold["items"], leave_own_out["items"])]
    assert max(differences) > 2e-4


def test_augmented_copies_train_the_banks_as_entries_of_their_own_image(tmp_path):
    """Three 64x64 images, four 32-pixel tiles; with every patch kept (percentage 1), each image's hflip and rot90
    copies add twice its entries, all recorded as coming from it (so leaving an image out leaves its copies out)."""
    from src.tiling.plan import MultiResolutionHRImageSpliter
    from src.tiling.tasks import A2OTaskGenerator
    from src.training.hiad import HRTrainer
    samples = [HRSample(noise_image(k, 64, 64)) for k in range(3)]
    plan = MultiResolutionHRImageSpliter(64, 32)

    def train(augment):
        folder = tmp_path / "-".join(augment or ["none"])
        config = {"patch": {"backbone_name": "mobilenet_v2", "layers_to_extract_from": ["features.6", "features.13"],
                            "percentage": 1.0, "pretrain_embed_dimension": 32, "target_embed_dimension": 32},
                  "data": {"train_augment": augment}}
        trainer = HRTrainer(batch_size=4, tasks=A2OTaskGenerator().create_tasks(samples, plan), config=config,
                            checkpoint_root=str(folder), log_root=str(folder / "logs"), vis_root=None)
        meta = trainer.train(samples, val_config=None, workers=1, seed=0)
        return meta, json.loads((folder / "task_0" / "bank.json").read_text())
    (plain, plain_bank), (copies, copies_bank) = train(None), train(["hflip", "rot90"])
    assert copies["config"]["data"]["train_augment"] == ["hflip", "rot90"]
    assert copies_bank["bank_size"] == 3 * plain_bank["bank_size"]
    cells = plain_bank["bank_size"] // 3
    assert collections.Counter(copies_bank["sources"]) == {0: 3 * cells, 1: 3 * cells, 2: 3 * cells}
    assert copies["jobs"]["task_0"]["fingerprint"] != plain["jobs"]["task_0"]["fingerprint"]
