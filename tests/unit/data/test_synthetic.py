"""Generated MVTec-layout data: layout, determinism, exact masks, modest contrast, atomic output (the
generate_data.py command line: tests/integration/test_generate_data_cli.py)."""
import json
import os

import cv2
import faiss
import numpy as np
import pytest

import src  # noqa: F401
import src.data.synthetic as synthetic
from src.utils.errors import InputError
from src.evaluation.metrics import image_auroc, pixel_auroc
from src.data.synthetic import (DEFECT_TYPES, MASK_EPSILON, TEXTURES, add_defect, generate_category, normal_image,
                           parse_image_size)
from conftest import folder_digests, leftovers, read_rgb

SMALL = dict(image_size=(64, 48), n_train=3, n_test_good=2, n_test_defect_per_type=1)


def test_layout_and_same_seed_gives_identical_files(tmp_path):
    first = generate_category(str(tmp_path / "a"), category="cat", texture="fabric", seed=3, **SMALL)
    generate_category(str(tmp_path / "b"), category="cat", texture="fabric", seed=3, **SMALL)
    generate_category(str(tmp_path / "c"), category="cat", texture="fabric", seed=4, **SMALL)
    digests = folder_digests(tmp_path / "a" / "cat")
    expected = {f"train/good/00{i}.png" for i in range(3)} | {"test/good/000.png", "test/good/001.png"}
    expected |= {f"test/{d}/000.png" for d in DEFECT_TYPES} | {f"ground_truth/{d}/000_mask.png" for d in DEFECT_TYPES}
    assert set(digests) == expected | {"generation.json"}
    assert first["counts"] == {"train/good": 3, "test/good": 2, **{f"test/{d}": 1 for d in DEFECT_TYPES}}
    assert digests == folder_digests(tmp_path / "b" / "cat")
    other = folder_digests(tmp_path / "c" / "cat")
    assert all(other[name] != digests[name] for name in expected if name.endswith("0.png"))
    image = read_rgb(tmp_path / "a" / "cat" / "train" / "good" / "000.png")
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert oct(os.stat(tmp_path / "a" / "cat").st_mode & 0o777) != oct(0o700)


def test_train_images_are_similar_but_not_identical():
    images = [normal_image("leather", np.random.default_rng([0, 0, i]), 64, 64).astype(np.float32) for i in range(3)]
    assert not np.array_equal(images[0], images[1])
    # Same surface statistics: per-image mean and contrast agree within a few grey levels.
    means, stds = [img.mean() for img in images], [img.std() for img in images]
    assert max(means) - min(means) < 8 and max(stds) - min(stds) < 4


def test_mask_files_are_exactly_the_changed_pixels(tmp_path):
    seed = 5
    generate_category(str(tmp_path), category="cat", texture="wood", seed=seed, **SMALL)
    folder = tmp_path / "cat"
    info = json.loads((folder / "generation.json").read_text())
    assert info["seed"] == seed and info["texture"] == "wood" and info["image_size"] == [64, 48]
    defects = [entry for entry in info["files"] if "defect" in entry]
    assert len(defects) == len(DEFECT_TYPES) and len(info["files"]) == 3 + 2 + len(DEFECT_TYPES)
    for entry in defects:
        kind = entry["defect"]["type"]
        image, mask = read_rgb(folder / entry["image"]), cv2.imread(str(folder / entry["mask"]), cv2.IMREAD_UNCHANGED)
        # The defect-free image comes from the documented per-file random stream.
        clean = normal_image("wood", np.random.default_rng([seed, 2 + DEFECT_TYPES.index(kind), 0]), 64, 48)
        assert mask.dtype == np.uint8 and mask.shape == (48, 64) and set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask > 0, (image != clean).any(axis=-1))
        assert entry["defect"]["mask_pixels"] == int((mask > 0).sum())


@pytest.mark.parametrize("texture", sorted(TEXTURES))
def test_every_defect_changes_exactly_its_mask_also_when_tiny(texture):
    rng = np.random.default_rng(7)
    clean = normal_image(texture, rng, 160, 128)
    for defect_type in DEFECT_TYPES:
        for low, high in ((12, 40), (3, 6)):   # regular, and a few pixels wide as on high-resolution images
            defective, mask, info = add_defect(clean, defect_type, rng, low, high, texture)
            change = np.abs(defective.astype(np.int16) - clean).max(axis=-1)
            assert mask.any() and np.array_equal(mask > 0, change > 0), (defect_type, low)
            assert change[mask > 0].min() > MASK_EPSILON
            x0, y0, x1, y1 = info["bbox_xyxy"]
            assert x1 - x0 <= 3 * high + 4 and y1 - y0 <= 3 * high + 4


def local_texture_features(image):
    """Local colour means, contrast and gradient structure at two scales: what a texture-aware detector sees."""
    x = image.astype(np.float32) / 255
    gray = x.mean(axis=-1)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    features = []
    for sigma in (2, 4):
        mean = cv2.GaussianBlur(x, (0, 0), sigma)
        spread = np.sqrt(np.maximum(cv2.GaussianBlur(x * x, (0, 0), sigma) - mean * mean, 0))
        structure = cv2.GaussianBlur(np.stack([gx * gx, gy * gy, gx * gy], -1), (0, 0), sigma)
        features += [3 * mean, 10 * spread, 10 * structure]
    return np.concatenate(features, axis=-1)


@pytest.mark.parametrize("texture", sorted(TEXTURES))
def test_defects_need_texture_features_not_raw_intensity(tmp_path, texture):
    """Raw intensity deviation from the mean normal image does not find the defects, while a nearest-neighbour
    detector on local texture statistics does: the defects are real but of modest contrast."""
    size = 128
    generate_category(str(tmp_path), category="cat", texture=texture, image_size=(size, size), n_train=8,
                      n_test_good=6, n_test_defect_per_type=3, seed=0)
    folder = tmp_path / "cat"
    files = json.loads((folder / "generation.json").read_text())["files"]
    train = np.stack([read_rgb(folder / e["image"]) for e in files if e["image"].startswith("train/")])
    tests = [e for e in files if e["image"].startswith("test/")]
    images = np.stack([read_rgb(folder / e["image"]) for e in tests])
    masks = np.stack([cv2.imread(str(folder / e["mask"]), cv2.IMREAD_UNCHANGED) if "mask" in e
                      else np.zeros((size, size), np.uint8) for e in tests])
    labels = np.array(["defect" in e for e in tests])
    assert all(mask.any() for mask in masks[labels])

    deviation = np.abs(images.astype(np.float32) - train.astype(np.float32).mean(axis=0)).max(axis=-1)
    naive_image = image_auroc(deviation.reshape(len(images), -1).max(axis=1), labels)
    naive_pixel = pixel_auroc(deviation, masks)
    assert naive_image < 0.9 and naive_pixel < 0.9

    # Every 4th train pixel as the memory bank, every 2nd test pixel scored: enough, and fast.
    bank = faiss.IndexFlatL2(18)
    bank.add(np.concatenate([local_texture_features(img)[::4, ::4].reshape(-1, 18) for img in train]))
    queries = np.concatenate([local_texture_features(img)[::2, ::2].reshape(-1, 18) for img in images])
    distances = bank.search(queries, 1)[0].reshape(len(images), size // 2, size // 2)
    assert pixel_auroc(distances, masks[:, ::2, ::2]) > max(0.8, naive_pixel + 0.05)


def test_existing_category_is_refused_unless_overwrite(tmp_path):
    generate_category(str(tmp_path), category="cat", seed=0, **SMALL)
    before = folder_digests(tmp_path / "cat")
    with pytest.raises(InputError, match="already exists"):
        generate_category(str(tmp_path), category="cat", seed=1, **SMALL)
    assert folder_digests(tmp_path / "cat") == before
    generate_category(str(tmp_path), category="cat", seed=1, overwrite=True, **SMALL)
    assert folder_digests(tmp_path / "cat") != before
    assert leftovers(tmp_path) == []


def test_failure_midway_leaves_no_partial_category(tmp_path, monkeypatch):
    written = []

    def failing_write(path, array):
        if len(written) == 4:
            raise OSError("disk full")
        written.append(path)
        cv2.imwrite(path, array)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_category(str(tmp_path), category="cat", **SMALL)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("arguments, message", [
    (dict(texture="marble"), "unknown texture"),
    (dict(defect_types=("scratch", "dent")), "defect types"),
    (dict(defect_types=("scratch", "scratch")), "defect types"),
    (dict(image_size=(8, 64)), "at least 16"),
    (dict(n_train=0), "n_train"),
    (dict(n_test_good=-1), "n_test_good"),
    (dict(min_defect_px=10, max_defect_px=5), "defect size"),
    (dict(max_defect_px=500), "defect size"),
    (dict(category="a/b"), "plain folder name"),
    (dict(seed=-1), "seed"),
])
def test_invalid_arguments_are_input_errors(tmp_path, arguments, message):
    with pytest.raises(InputError, match=message):
        generate_category(str(tmp_path), **{**SMALL, "category": "cat", **arguments})
    assert os.listdir(tmp_path) == []


def test_parse_image_size():
    assert parse_image_size("256") == (256, 256)
    assert parse_image_size("640x480") == (640, 480)
    for bad in ("", "12x", "axb", "1x2x3", "-5"):
        with pytest.raises(InputError, match="not N or WxH"):
            parse_image_size(bad)
