"""Stitching tile maps: exact constants and global maps, plain placement without overlap, seamless overlaps,
two full-size float32 arrays of memory."""
import tracemalloc

import numpy as np
import pytest

import src  # noqa: F401
from src.utils.errors import InputError
from src.tiling.stitching import BLENDS, stitch
from src.tiling.plan import Box, MultiResolutionHRImageSpliter

# (image_size, patch_size, stride): no overlap, overlap with an edge-shifted last tile, non-square image and tiles
PLANS = [((64, 64), (16, 16), None), ((50, 50), (20, 20), (10, 10)), ((64, 48), (20, 12), (15, 9)),
         ((37, 23), (16, 8), (16, 8))]


def crops(global_map, plan):
    return [global_map[t.main_index.y:t.main_index.y + t.main_index.height,
                       t.main_index.x:t.main_index.x + t.main_index.width] for t in plan]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("image_size, patch_size, stride", PLANS)
def test_constant_is_reproduced_exactly(image_size, patch_size, stride, blend):
    plan = MultiResolutionHRImageSpliter(image_size, patch_size, stride)
    width, height = image_size
    for value in (0.1, 1.0 / 3, 7.25e-3, -2.5, 123456.789):
        tiles = [np.full((t.main_index.height, t.main_index.width), value, np.float32) for t in plan]
        result = stitch(tiles, plan, image_size, blend)
        assert result.dtype == np.float32 and result.shape == (height, width)
        assert np.array_equal(result, np.full((height, width), value, np.float32))


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("image_size, patch_size, stride", PLANS)
def test_global_map_is_reproduced(image_size, patch_size, stride, blend):
    width, height = image_size
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    global_map = np.sin(xs / 7) + np.cos(ys / 5) * xs / width   # differs along both axes: catches x/y swaps
    plan = MultiResolutionHRImageSpliter(image_size, patch_size, stride)
    assert np.array_equal(stitch(crops(global_map, plan), plan, image_size, blend), global_map)


@pytest.mark.parametrize("blend", BLENDS)
def test_without_overlap_tiles_are_placed_as_they_are(blend):
    plan = MultiResolutionHRImageSpliter((48, 32), (16, 8))
    rng = np.random.default_rng(0)
    tiles = [rng.standard_normal((8, 16)).astype(np.float32) for _ in plan]
    expected = np.zeros((32, 48), np.float32)
    for tile, index in zip(tiles, plan):
        x, y, w, h = index.main_index
        expected[y:y + h, x:x + w] = tile
    assert np.array_equal(stitch(tiles, plan, (48, 32), blend), expected)


def two_tile_transition(blend):
    """Two 32-wide tiles overlapping by 16 columns, valued 0 (left) and 1 (right)."""
    boxes = [Box(0, 0, 32, 4), Box(16, 0, 32, 4)]
    tiles = [np.zeros((4, 32), np.float32), np.ones((4, 32), np.float32)]
    return stitch(tiles, boxes, (48, 4), blend)[0]


def test_hann_overlap_has_no_seam():
    row = two_tile_transition("hann")
    assert np.all(row[:16] == 0) and np.all(row[32:] == 1)
    assert np.all(np.diff(row) >= 0), "the transition should rise monotonically"
    assert np.abs(np.diff(row)).max() < 0.15   # spread over the 16 overlapping columns, no jump
    # Column 20 is column 20 of the left tile and column 4 of the right one.
    window = lambda i: np.sin(np.pi * (i + 0.5) / 32) ** 2  # noqa: E731
    assert row[20] == pytest.approx(window(4) / (window(20) + window(4)), rel=1e-6)
    mean_row = two_tile_transition("mean")
    assert np.abs(np.diff(mean_row)).max() == pytest.approx(0.5)   # plain averaging steps at tile borders


def test_overlaps_stay_within_the_covering_tiles_values_and_ignore_order():
    plan = MultiResolutionHRImageSpliter((50, 40), (20, 20), (10, 10))
    tiles = [np.full((20, 20), float(k), np.float32) for k in range(len(plan))]
    result = stitch(tiles, plan, (50, 40))
    low, high = np.full((40, 50), np.inf), np.full((40, 50), -np.inf)
    for k, index in enumerate(plan):
        x, y, w, h = index.main_index
        low[y:y + h, x:x + w] = np.minimum(low[y:y + h, x:x + w], k)
        high[y:y + h, x:x + w] = np.maximum(high[y:y + h, x:x + w], k)
    assert np.all(result >= low - 1e-5) and np.all(result <= high + 1e-5)
    order = np.random.default_rng(0).permutation(len(plan))
    shuffled = stitch([tiles[k] for k in order], [plan[k] for k in order], (50, 40))
    np.testing.assert_allclose(shuffled, result, rtol=1e-5, atol=1e-5)


def test_memory_is_two_full_size_float32_arrays():
    size, patch, stride = 512, 64, 32
    plan = MultiResolutionHRImageSpliter(size, patch, stride)
    tiles = [np.ones((patch, patch), np.float32) for _ in plan]
    tracemalloc.start()
    try:
        result = stitch(tiles, plan, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full = size * size * 4
    assert result.nbytes == full
    # Beyond the two arrays only a few tile-sized temporaries (a third full array would be +1 MiB).
    assert peak < 2 * full + 16 * patch * patch * 4, f"peak {peak} bytes for two {full}-byte arrays"


def test_bad_inputs_are_input_errors():
    plan = MultiResolutionHRImageSpliter(32, 16)
    tiles = [np.zeros((16, 16), np.float32) for _ in plan]
    with pytest.raises(InputError, match="blend"):
        stitch(tiles, plan, 32, blend="max")
    with pytest.raises(InputError, match="covered by no tile"):
        stitch(tiles[:3], plan[:3], 32)
    with pytest.raises(InputError, match="3 tile maps for 4"):
        stitch(tiles[:3], plan, 32)
    with pytest.raises(InputError, match="shape"):
        stitch(tiles[:3] + [np.zeros((16, 15))], plan, 32)
    with pytest.raises(InputError, match="outside"):
        stitch(tiles, plan, (31, 32))
