"""src/data/synthesizers.py: exact masks, sizes, determinism, texture sources."""
import cv2
import numpy as np
import pytest

import src  # noqa: F401
from conftest import changed_pixels, noise_image, write_png
from src.utils.errors import InputError
from src.data.synthesizers import (MASK_EPSILON, SYNTHESIZERS, ColorShift, CutPaste, ImageBlending, RandomBox,
                                   build_synthesizer)

NAMES = sorted(SYNTHESIZERS)


def sample_images():
    """Random, flat, saturated and non-square images: a change must be visible on each of them."""
    return [noise_image(0), np.full((40, 40, 3), 128, np.uint8), np.full((30, 50, 3), 255, np.uint8),
            np.zeros((33, 21, 3), np.uint8)]


@pytest.fixture
def texture_dir(tmp_path):
    folder = tmp_path / "textures"
    (folder / "b_class").mkdir(parents=True)
    stripes = np.tile(np.arange(0, 250, 25, dtype=np.uint8)[None, :, None], (6, 1, 3))
    write_png(folder / "b_class" / "stripes.png", stripes)
    write_png(folder / "a.png", noise_image(7, 30, 40))
    (folder / "notes.txt").write_text("not an image")
    return folder


def synthesizers(texture_folder=None):
    made = [build_synthesizer(name) for name in NAMES]
    if texture_folder is not None:
        made.append(ImageBlending(texture_dir=texture_folder))
    return made


def test_mask_is_exactly_the_changed_pixels(texture_dir):
    for synthesizer in synthesizers(texture_dir):
        for image_number, image in enumerate(sample_images()):
            for seed in range(4):
                original = image.copy()
                new_image, mask = synthesizer(image, np.random.default_rng(seed))
                assert np.array_equal(image, original), "the input image must not be modified"
                assert new_image.dtype == np.uint8 and new_image.shape == image.shape
                assert mask.dtype == np.uint8 and mask.shape == image.shape[:2] and set(np.unique(mask)) == {0, 1}
                assert np.array_equal(mask.astype(bool), changed_pixels(image, new_image)), (synthesizer, image_number)
                change = np.abs(new_image.astype(int) - image).max(axis=-1)
                assert change[mask > 0].min() > MASK_EPSILON


def test_same_seed_same_output_and_seeds_differ(texture_dir):
    image = noise_image(1)
    for synthesizer in synthesizers(texture_dir):
        first = synthesizer(image, np.random.default_rng(5))
        again = synthesizer(image, np.random.default_rng(5))
        other = synthesizer(image, np.random.default_rng(6))
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not np.array_equal(first[0], other[0])


def bounding_box(mask):
    ys, xs = np.nonzero(mask)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


# Those whose footprint fills its box (a rectangle, or an ellipse inscribed in it); the others draw a line or an
# irregular shape inside it.
FILLING = ["Blur", "ColorShift", "CutPaste", "ImageBlending", "RandomBox"]


@pytest.mark.parametrize("name", FILLING)
def test_sizes_in_pixels_and_fractions(name):
    image = noise_image(2, 40, 80)   # shorter side 40
    for min_size, max_size, side in [(12, 12, 12), (0.25, 0.25, 10), (1, 1, 1)]:
        synthesizer = build_synthesizer(name, min_size=min_size, max_size=max_size)
        for seed in range(3):
            _, mask = synthesizer(image, np.random.default_rng(seed))
            # Rectangles fill their box; ellipses inscribed in it reach the middle of every side.
            assert bounding_box(mask) == (side, side), (name, min_size)
    synthesizer = build_synthesizer(name, min_size=3, max_size=0.5)
    heights, widths = zip(*(bounding_box(synthesizer(image, np.random.default_rng(seed))[1]) for seed in range(40)))
    assert min(heights + widths) >= 3 and max(heights + widths) <= 20 and len(set(heights + widths)) > 5


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(FILLING)))
def test_line_and_blob_defects_stay_inside_their_box_at_any_size(name):
    image = noise_image(2, 40, 80)
    for min_size, max_size, side in [(12, 12, 12), (0.25, 0.25, 10), (3, 20, 20)]:
        synthesizer = build_synthesizer(name, min_size=min_size, max_size=max_size)
        for seed in range(5):
            _, mask = synthesizer(image, np.random.default_rng(seed))
            height, width = bounding_box(mask)
            assert 1 <= height <= side and 1 <= width <= side, (name, min_size, height, width)


def test_the_subtle_defects_are_thin_or_faint():
    image = np.full((128, 128, 3), 128, np.uint8)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        changed, mask = build_synthesizer("Scratch", min_size=40, max_size=60)(image, rng)
        assert not cv2.erode(mask, np.ones((5, 5), np.uint8)).any()      # no 5x5 square fits: a thin stroke
        assert max(bounding_box(mask)) >= 20 and np.abs(changed.astype(int) - image)[mask > 0].max() <= 45
        changed, mask = build_synthesizer("Stain", min_size=40, max_size=60)(image, rng)
        assert np.abs(changed.astype(int) - image)[mask > 0].mean() <= 0.2 * 1.3 * 128   # a few percent of the colour


def test_one_pixel_defects_change_exactly_one_pixel():
    image = noise_image(3)
    for name in NAMES:
        _, mask = build_synthesizer(name, min_size=1, max_size=1)(image, np.random.default_rng(0))
        assert mask.sum() == 1


def test_box_larger_than_image_is_clamped():
    image = noise_image(4, 10, 30)
    _, mask = RandomBox(min_size=50, max_size=60)(image, np.random.default_rng(0))
    assert bounding_box(mask) == (10, 30) and mask.all()


def test_random_box_is_one_colour():
    image = np.full((40, 40, 3), 128, np.uint8)
    for seed in range(5):
        new_image, mask = RandomBox()(image, np.random.default_rng(seed))
        colours = np.unique(new_image[mask > 0], axis=0)
        assert len(colours) == 1


def test_cut_paste_is_a_translated_copy():
    height, width = 64, 64
    ys, xs = np.mgrid[:height, :width]
    image = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)   # every pixel tells where it is
    for seed in range(5):
        new_image, mask = CutPaste(brightness_jitter=0)(image, np.random.default_rng(seed))
        inside = mask > 0
        shift_x = new_image[..., 0].astype(int)[inside] - xs[inside]
        shift_y = new_image[..., 1].astype(int)[inside] - ys[inside]
        assert len(set(shift_x)) == 1 and len(set(shift_y)) == 1, "the pasted block is not one translated copy"
        assert np.all(new_image[..., 2] == 0), "copied pixels are not altered (no nudge needed)"


def test_color_shift_moves_a_flat_region_by_one_offset():
    image = np.full((40, 40, 3), 128, np.uint8)
    for seed in range(5):
        synthesizer = ColorShift(shift=(30, 50))
        new_image, mask = synthesizer(image, np.random.default_rng(seed))
        offsets = np.unique(new_image[mask > 0].astype(int) - 128, axis=0)
        assert len(offsets) == 1
        assert 29.0 <= np.linalg.norm(offsets[0]) <= 51.0   # rounding moves each channel by at most 0.5


def test_image_blending_uses_the_texture_files(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    write_png(folder / "only.png", np.full((4, 6, 3), (200, 50, 120), np.uint8))   # smaller than the box: enlarged
    synthesizer = ImageBlending(texture_dir=folder, min_size=10, max_size=12, opacity=(1.0, 1.0))
    new_image, mask = synthesizer(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))
    assert np.all(new_image[mask > 0] == (200, 50, 120)) and mask.sum() > 50


def test_image_blending_texture_list_is_sorted_and_images_only(texture_dir):
    files = ImageBlending(texture_dir=texture_dir).texture_files
    assert [f.rsplit("textures", 1)[1] for f in files] == ["/a.png", "/b_class/stripes.png"]


def test_procedural_blend_differs_from_the_image():
    image = np.full((64, 64, 3), 90, np.uint8)
    new_image, mask = ImageBlending(min_size=20, max_size=20, opacity=(1, 1))(image, np.random.default_rng(0))
    patch = new_image[mask > 0].astype(float)
    assert patch.std(axis=0).max() > 5, "the noise texture should have structure, not one flat colour"


@pytest.mark.parametrize("kwargs", [dict(min_size=0), dict(min_size=1.5), dict(max_size=True), dict(min_size="3"),
                                    dict(min_size=10, max_size=5), dict(min_size=0.5, max_size=0.2)])
def test_bad_sizes_are_input_errors(kwargs):
    with pytest.raises(InputError):
        RandomBox(**kwargs)


def test_bad_parameters_are_input_errors(tmp_path):
    with pytest.raises(InputError):
        CutPaste(brightness_jitter=1.5)
    with pytest.raises(InputError):
        ColorShift(shift=(1, 2))
    with pytest.raises(InputError):
        ImageBlending(opacity=(0, 0.5))
    with pytest.raises(InputError, match="not found"):
        ImageBlending(texture_dir=tmp_path / "missing")
    with pytest.raises(InputError, match="no texture images"):
        ImageBlending(texture_dir=tmp_path)
    with pytest.raises(InputError):
        RandomBox()(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(InputError):
        RandomBox()(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_factory_names_aliases_and_config_round_trip():
    assert type(build_synthesizer("RandomeBoxSynthesizer")) is RandomBox   # HiAD's spelling
    assert type(build_synthesizer("CutPasteAnomalySynthesizer")) is CutPaste
    with pytest.raises(InputError, match="unknown anomaly synthesizer"):
        build_synthesizer("Sparkle")
    with pytest.raises(InputError, match="bad parameters"):
        build_synthesizer("RandomBox", colour=3)
    image = noise_image(8)
    for name in NAMES:
        original = build_synthesizer(name, min_size=4, max_size=0.3)
        rebuilt = build_synthesizer(**original.config())
        assert rebuilt.config() == original.config()
        assert np.array_equal(original(image, np.random.default_rng(1))[0], rebuilt(image, np.random.default_rng(1))[0])


