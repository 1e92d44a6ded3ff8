"""src/data: the MVTec-layout lists, masks and the reference's view of an image."""
import os

import numpy as np
import pytest
from PIL import Image

import src  # noqa: F401
from src.data.mvtec import list_test_samples, list_train_samples
from src.data.sample import ResizeCrop, Sample
from src.patchcore.featurizer import network_input
from src.utils.errors import InputError


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_dataset_lists_are_sorted_and_masks_are_nearest_binarised(tmp_path):
    cat = tmp_path / "cat"
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png"):
        write_png(cat / "train" / "good" / name, rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    write_png(cat / "test" / "good" / "000.png", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    write_png(cat / "test" / "cut" / "000.png", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    mask = np.zeros((300, 300), np.uint8)
    mask[150, 150] = 1  # a single low-valued pixel: bilinear-then-truncate would erase it
    write_png(cat / "ground_truth" / "cut" / "000_mask.png", mask)
    assert [os.path.basename(s.image_path) for s in list_train_samples(str(tmp_path), "cat")] == ["a.png", "b.png"]
    tests = list_test_samples(str(tmp_path), "cat")
    assert [(s.defect_type, s.label) for s in tests] == [("cut", 1), ("good", 0)]
    viewed = tests[0].with_view(ResizeCrop(256, 224))
    out = viewed.load_mask()
    assert out.shape == (224, 224) and out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert out.sum() >= 1
    image = network_input([viewed.load_image()], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    assert image.shape == (3, 224, 224) and image.dtype == np.float32
    rgb = viewed.load_image().astype(np.float32) / 255
    np.testing.assert_allclose(image[0], (rgb[:, :, 0] - 0.485) / 0.229, atol=1e-5)


def test_non_square_images_resize_shorter_side(tmp_path):
    path = tmp_path / "wide.png"
    write_png(path, np.zeros((300, 600, 3), np.uint8))
    assert Sample(str(path), view=ResizeCrop(256, 224)).load_image().shape == (224, 224, 3)


def test_missing_mask_is_an_error_naming_the_mask(tmp_path):
    write_png(tmp_path / "c" / "test" / "hole" / "000.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="000_mask.png"):
        list_test_samples(str(tmp_path), "c")


def test_resize_crop_view_is_the_references_pil_transform(tmp_path):
    """Shorter side to 256 with Pillow's bilinear filter, then the centre 224 crop, as torchvision's
    Resize(256) + CenterCrop(224) on a PIL image: the same pixels, for a non-square image."""
    path = tmp_path / "wide.png"
    write_png(path, np.random.default_rng(2).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    with Image.open(path) as img:
        resized = img.convert("RGB").resize((round(410 * 256 / 300), 256), Image.BILINEAR)
    left, top = (resized.size[0] - 224) // 2, (resized.size[1] - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)))
    assert np.array_equal(Sample(str(path), view=ResizeCrop(256, 224)).load_image(), expected)
