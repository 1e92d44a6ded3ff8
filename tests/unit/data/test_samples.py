"""HRSample: lazy loading, format conversions (gray, RGBA, 16-bit), masks and input errors."""
import cv2
import numpy as np
import pytest
from PIL import Image

from src.utils.errors import InputError
from src.data.sample import HRSample


def write(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_colour_png_loads_in_rgb_order(tmp_path, rgb):
    path = write(tmp_path / "a.png", rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(HRSample(path).load_image(), rgb)


def test_jpeg_loads_in_rgb_order(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 250
    path = str(tmp_path / "red.jpg")
    Image.fromarray(red).save(path, quality=95)
    loaded = HRSample(path).load_image()
    assert loaded.shape == (16, 16, 3) and loaded[..., 0].min() > 230 and loaded[..., 1:].max() < 20


def test_grayscale_becomes_three_equal_channels(tmp_path, rgb):
    gray = rgb[..., 0]
    loaded = HRSample(write(tmp_path / "g.png", gray)).load_image()
    assert loaded.shape == (24, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_rgba_drops_alpha(tmp_path, rgb):
    alpha = np.full((24, 32, 1), 7, np.uint8)
    path = write(tmp_path / "a.png", np.concatenate([rgb[..., ::-1], alpha], axis=2))
    np.testing.assert_array_equal(HRSample(path).load_image(), rgb)


def test_16_bit_is_divided_by_257_with_rounding(tmp_path):
    values = np.array([[0, 128, 129, 257, 385, 386, 65535, 32896]], np.uint16)
    expected = np.array([[0, 0, 1, 1, 1, 2, 255, 128]], np.uint8)
    gray = HRSample(write(tmp_path / "g16.png", values)).load_image()
    np.testing.assert_array_equal(gray[..., 0], expected)
    colour = np.stack([values, values[:, ::-1], np.zeros_like(values)], axis=2)  # R, G, B
    loaded = HRSample(write(tmp_path / "c16.png", colour[..., ::-1])).load_image()
    np.testing.assert_array_equal(loaded[..., 0], expected)
    np.testing.assert_array_equal(loaded[..., 1], expected[:, ::-1])
    assert loaded[..., 2].max() == 0


def test_float_images_are_rejected(tmp_path):
    path = write(tmp_path / "f.tiff", np.full((8, 8, 3), 0.5, np.float32))
    with pytest.raises(InputError, match="unsupported pixel format"):
        HRSample(path).load_image()


@pytest.mark.parametrize("extension", ["png", "jpg"])
def test_truncated_files_fail_on_load_not_on_construction(tmp_path, rgb, extension):
    full = tmp_path / f"full.{extension}"
    write(full, np.tile(rgb, (8, 8, 1)))
    data = full.read_bytes()
    cut = tmp_path / f"cut.{extension}"
    cut.write_bytes(data[:len(data) // 2])
    sample = HRSample(str(cut))  # lazy: nothing decoded yet
    with pytest.raises(InputError) as error:
        sample.load_image()
    assert str(error.value).startswith(f"{cut}: ")


def test_not_an_image_and_missing_files(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not a png")
    with pytest.raises(InputError, match="junk.png"):
        HRSample(str(junk)).load_image()
    with pytest.raises(InputError, match="not found"):
        HRSample(str(tmp_path / "missing.png"))


def test_loading_reads_the_file_each_time(tmp_path, rgb):
    path = write(tmp_path / "a.png", rgb)
    sample = HRSample(path)
    first = sample.load_image()
    write(path, 255 - rgb)
    np.testing.assert_array_equal(sample.load_image(), 255 - first)


def test_image_size_resizes_int_and_non_square(tmp_path, rgb):
    path = write(tmp_path / "a.png", rgb)
    assert HRSample(path, image_size=16).load_image().shape == (16, 16, 3)
    assert HRSample(path, image_size=(64, 20)).load_image().shape == (20, 64, 3)
    assert HRSample(path).load_image().shape == (24, 32, 3)


def test_array_image_is_rgb_and_never_modified(rgb):
    original = rgb.copy()
    sample = HRSample(rgb)
    loaded = sample.load_image()
    np.testing.assert_array_equal(loaded, rgb)
    loaded[:] = 0
    np.testing.assert_array_equal(rgb, original)
    assert sample.name == "<array>" and sample.label == 0


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 4), np.uint8), [[1, 2, 3]]])
def test_bad_arrays_are_input_errors(bad):
    with pytest.raises(InputError, match="<array>"):
        HRSample(bad)


def test_mask_is_binarised_and_resized_nearest(tmp_path, rgb):
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 8:24] = 3  # any non-zero value is a defect
    image = write(tmp_path / "a.png", rgb)
    sample = HRSample(image, mask=write(tmp_path / "a_mask.png", mask), image_size=(16, 12))
    loaded = sample.load_mask()
    assert loaded.shape == (12, 16) and loaded.dtype == np.uint8
    assert set(np.unique(loaded)) == {0, 1}
    np.testing.assert_array_equal(loaded, cv2.resize((mask > 0).astype(np.uint8), (16, 12),
                                                     interpolation=cv2.INTER_NEAREST))
    assert sample.label == 1


def test_16_bit_mask_value_one_is_a_defect(tmp_path, rgb):
    mask = np.zeros((24, 32), np.uint16)
    mask[0, 0] = 1  # would round to 0 if converted to 8 bits first
    sample = HRSample(write(tmp_path / "a.png", rgb), mask=write(tmp_path / "m.png", mask))
    assert sample.load_mask().sum() == 1


def test_missing_mask_gives_zeros_at_image_size(tmp_path, rgb):
    sample = HRSample(write(tmp_path / "a.png", rgb), image_size=(10, 6))
    mask = sample.load_mask()
    assert mask.shape == (6, 10) and mask.max() == 0 and sample.label == 0


def test_wrong_size_mask_names_the_mask_file(tmp_path, rgb):
    mask_path = write(tmp_path / "a_mask.png", np.zeros((10, 10), np.uint8))
    sample = HRSample(write(tmp_path / "a.png", rgb), mask=mask_path, image_size=16)
    with pytest.raises(InputError) as error:
        sample.load_mask()
    assert str(error.value).startswith(f"{mask_path}: mask size 10x10 differs from its image 32x24")


def test_labels(tmp_path, rgb):
    image = write(tmp_path / "a.png", rgb)
    assert HRSample(image, label=1).label == 1
    with pytest.raises(InputError, match="label"):
        HRSample(image, label=2)


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit_gray", "16bit_rgb"])
def test_one_decoding_rule_for_both_views(tmp_path, kind):
    """The 224-pixel model's ResizeCrop view and the tiled models' Resize view decode a file the same way: each
    equals the view applied to the 8-bit RGB the one decoder gives, and that equals the rule written out."""
    from src.data.sample import Resize, ResizeCrop, Sample
    rng = np.random.default_rng(5)
    rgb8 = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    if kind == "gray":
        cv2.imwrite(str(path), rgb8[..., 0])
        expected = np.repeat(rgb8[..., :1], 3, axis=2)
    elif kind == "rgba":
        cv2.imwrite(str(path), np.dstack([rgb8[..., ::-1], np.full((40, 60), 7, np.uint8)]))
        expected = rgb8
    else:
        wide = rgb8.astype(np.uint16) * 257 + rng.integers(0, 129, rgb8.shape).astype(np.uint16)
        cv2.imwrite(str(path), wide[..., 0] if kind == "16bit_gray" else wide[..., ::-1])
        rounded = ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8)
        expected = np.repeat(rounded[..., :1], 3, axis=2) if kind == "16bit_gray" else rounded
    assert np.array_equal(Sample(str(path)).load_image(), expected)
    for view in (ResizeCrop(32, 24), Resize((30, 20))):
        assert np.array_equal(Sample(str(path), view=view).load_image(), view.image(expected))
    assert Sample(str(path), view=ResizeCrop(32, 24)).load_image().shape == (24, 24, 3)


def test_a_view_is_rebuilt_from_its_record_and_a_damaged_record_is_refused():
    from src.data.sample import Resize, ResizeCrop, view_from_dict
    for view in (Resize((48, 32)), ResizeCrop(72, 64)):
        assert view_from_dict(view.to_dict()).to_dict() == view.to_dict()
    assert view_from_dict(None) is None
    for record, problem in (({"name": "resize_crop", "crop": 64}, "malformed image view"),
                            ({"name": "fisheye"}, "unknown image view 'fisheye'"),
                            ({"name": "resize", "size": [48, 32], "zoom": 2}, "bad parameters")):
        with pytest.raises(InputError, match=problem):
            view_from_dict(record)
