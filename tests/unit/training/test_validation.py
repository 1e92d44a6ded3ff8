"""src/training/validation.py: the validation set drawn from the normal training images."""
import collections

import numpy as np
import pytest

import src  # noqa: F401
from conftest import changed_pixels, noise_image, write_png
from src.data.sample import HRSample
from src.data.synthesizers import SYNTHESIZERS, ColorShift
from src.training.validation import build_validation_set
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
