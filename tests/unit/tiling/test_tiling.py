"""Tile plan: seed JSON strings, coverage/bounds/count properties, low-resolution indexes, crops."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.utils.errors import InputError
from src.tiling.plan import Box, Index, MultiResolutionHRImageSpliter, TileIndex, crop, crop_levels, tile_starts

# Copied from seed 000 (quick start): 2048x2048, patch 512.
SEED_PLAN = [
    '{"main_index": {"x": 0, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 512, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1024, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1536, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 0, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 512, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1024, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1536, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 0, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 512, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1024, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1536, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 0, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 512, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1024, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": null}',
    '{"main_index": {"x": 1536, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": null}',
]

# Copied from seed 001 (advanced settings): the same plan with ds_factors=[0, 1].
SEED_PLAN_DS01 = [
    '{"main_index": {"x": 0, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 512, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1024, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1536, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 0, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 512, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1024, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1536, "y": 512, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 0, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 0, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 512, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1024, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1536, "y": 1024, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 0, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 512, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 0, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1024, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 1024, "width": 1024, "height": 1024}]}',
    '{"main_index": {"x": 1536, "y": 1536, "width": 512, "height": 512}, "low_resolution_indexes": [{"x": 1024, "y": 1024, "width": 1024, "height": 1024}]}',
]


def test_seed_plan_prints_exactly():
    assert [str(index) for index in MultiResolutionHRImageSpliter(image_size=2048, patch_size=512)] == SEED_PLAN


def test_seed_plan_with_ds_factors_prints_exactly():
    plan = MultiResolutionHRImageSpliter(image_size=2048, patch_size=512, ds_factors=[0, 1])
    assert [str(index) for index in plan] == SEED_PLAN_DS01


def test_int_and_pair_arguments_are_equivalent():
    by_int = MultiResolutionHRImageSpliter(image_size=2048, patch_size=512)
    by_pair = MultiResolutionHRImageSpliter(image_size=(2048, 2048), patch_size=(512, 512))
    assert list(by_int) == list(by_pair)


def test_non_square_image_and_tiles():
    plan = MultiResolutionHRImageSpliter(image_size=(2048, 1024), patch_size=(512, 256))
    assert (plan.rows, plan.cols, len(plan)) == (4, 4, 16)
    assert plan[1].main_index == Box(512, 0, 512, 256)
    assert plan[4].main_index == Box(0, 256, 512, 256)
    assert (plan[-1].row, plan[-1].col) == (3, 3)


def test_grid_positions_are_row_major():
    plan = MultiResolutionHRImageSpliter(image_size=(1000, 600), patch_size=300)
    assert [(i.row, i.col) for i in plan] == [(r, c) for r in range(plan.rows) for c in range(plan.cols)]


def test_edge_tiles_shift_inward():
    assert tile_starts(1000, 300, 300) == [0, 300, 600, 700]
    assert tile_starts(1000, 300, 200) == [0, 200, 400, 600, 700]
    assert tile_starts(300, 300, 100) == [0]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"image_size": 256, "patch_size": 512}, "larger than image_size"),
    ({"image_size": (512, 128), "patch_size": 256}, "larger than image_size"),
    ({"image_size": 512, "patch_size": 128, "stride": 256}, "pixels would be skipped"),
    ({"image_size": 512, "patch_size": 0}, "positive int"),
    ({"image_size": (512, 512, 3), "patch_size": 128}, "positive int"),
    ({"image_size": 512, "patch_size": 128, "ds_factors": [1]}, "starting with 0"),
    ({"image_size": 512, "patch_size": 128, "ds_factors": [0, 1, 1]}, "distinct"),
    ({"image_size": 512, "patch_size": 128, "ds_factors": [0, 3]}, "larger than image_size"),
])
def test_bad_plans_are_input_errors(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        MultiResolutionHRImageSpliter(**kwargs)


sizes = st.integers(min_value=1, max_value=160)


@st.composite
def plan_arguments(draw):
    image = (draw(sizes), draw(sizes))
    patch = tuple(draw(st.integers(1, side)) for side in image)
    stride = tuple(draw(st.integers(1, p)) for p in patch)
    return [*image], [*patch], [*stride]


@settings(max_examples=150, deadline=None)
@given(plan_arguments())
def test_plan_covers_every_pixel_in_bounds_with_expected_counts(arguments):
    image, patch, stride = arguments
    snapshot = [list(image), list(patch), list(stride)]
    plan = MultiResolutionHRImageSpliter(image_size=image, patch_size=patch, stride=stride)
    assert [image, patch, stride] == snapshot  # caller's lists untouched

    (width, height), (pw, ph), (sw, sh) = image, patch, stride
    expected_cols = math.ceil((width - pw) / sw) + 1
    expected_rows = math.ceil((height - ph) / sh) + 1
    assert (plan.rows, plan.cols, len(plan)) == (expected_rows, expected_cols, expected_rows * expected_cols)

    covered = np.zeros((height, width), np.int32)
    for index in plan:
        x, y, w, h = index.main_index
        assert (w, h) == (pw, ph) and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        covered[y:y + h, x:x + w] += 1
    assert covered.min() >= 1
    assert len({(i.row, i.col) for i in plan}) == len(plan)


@settings(max_examples=100, deadline=None)
@given(plan_arguments(), st.integers(1, 2))
def test_low_resolution_boxes_contain_their_tile(arguments, top_factor):
    image, patch, stride = arguments
    factors = list(range(top_factor + 1))
    if any(p << top_factor > i for p, i in zip(patch, image)):
        with pytest.raises(InputError):
            MultiResolutionHRImageSpliter(image, patch, stride, ds_factors=factors)
        return
    plan = MultiResolutionHRImageSpliter(image, patch, stride, ds_factors=factors)
    assert factors == list(range(top_factor + 1))
    for index in plan:
        assert len(index.low_resolution_indexes) == top_factor
        x, y, w, h = index.main_index
        for k, box in zip(factors[1:], index.low_resolution_indexes):
            assert (box.width, box.height) == (patch[0] << k, patch[1] << k)
            assert 0 <= box.x <= x and x + w <= box.x + box.width <= image[0]
            assert 0 <= box.y <= y and y + h <= box.y + box.height <= image[1]


def test_ds_factor_zero_alone_has_no_low_resolution_indexes():
    assert str(MultiResolutionHRImageSpliter(1024, 512, ds_factors=[0])[0]).endswith('"low_resolution_indexes": null}')


def test_index_dict_roundtrip_keeps_grid_position():
    for index in MultiResolutionHRImageSpliter(2048, 512, stride=384, ds_factors=[0, 1]):
        data = json.loads(json.dumps(index.to_dict()))
        assert Index.from_dict(data) == index
        assert (data["row"], data["col"]) == (index.row, index.col)
        assert json.loads(str(index)) == {k: v for k, v in data.items() if k not in ("row", "col")}


@pytest.mark.parametrize("data", [
    {"low_resolution_indexes": None},
    {"main_index": {"x": 0, "y": 0, "width": 5}},
    {"main_index": {"x": 0, "y": 0, "width": 5, "height": "5"}},
    {"main_index": {"x": 0, "y": 0, "width": 5, "height": 5}, "low_resolution_indexes": {"x": 0}},
    {"main_index": {"x": 0, "y": 0, "width": 5, "height": 5}, "row": -1},
])
def test_malformed_index_dicts_are_input_errors(data):
    with pytest.raises(InputError):
        TileIndex.from_dict(data)


def test_crop_and_levels():
    image = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3).astype(np.uint8)
    plan = MultiResolutionHRImageSpliter(64, 16, ds_factors=[0, 1])
    index = plan[5]  # x=16, y=16
    np.testing.assert_array_equal(crop(image, index), image[16:32, 16:32])
    tile, coarse = crop_levels(image, index)
    assert tile.shape == coarse.shape == (16, 16, 3)
    # the 32x32 region at (0, 0) halved by area averaging = mean of each 2x2 block
    expected = image[:32, :32].astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(coarse - expected).max() <= 0.5 + 1e-9
    with pytest.raises(InputError, match="outside"):
        crop(image[:20, :20], index)
