"""Stitch per-tile score maps into one full-image map.

Every output pixel is the weighted mean of the tiles covering it. With ``blend="hann"`` a tile's weight
is the separable window ``sin(pi (i + 0.5) / n) ** 2`` along each axis: largest in the tile centre,
falling smoothly towards its borders but positive everywhere, so where tiles overlap the map passes
gradually from one tile to the next (no seams) and every covered pixel has a defined value. With
``blend="mean"`` all weights are 1 (plain average). Where only one tile covers a pixel, the pixel is
that tile's value, bit for bit, whatever the blend: a plan without overlap is plain placement.

The mean is accumulated as a running weighted mean, ``mean += (tile - mean) * w / total_weight``, in two
float32 full-size arrays (mean and total weight). Unlike sum(w * v) / sum(w) it reproduces a value on
which all covering tiles agree exactly (the correction is ``0 * ...``), so a constant, or any map the
tiles cut from one global map, comes back unchanged.
"""
import functools

import numpy as np

from src.utils.errors import InputError
from src.data.sample import as_width_height

BLENDS = ("hann", "mean")


@functools.lru_cache(maxsize=64)
def _window_1d(length, blend):
    if blend == "mean":
        return np.ones(length, np.float32)
    return (np.sin(np.pi * (np.arange(length) + 0.5) / length) ** 2).astype(np.float32)


def _box_of(index):
    """(x, y, width, height) of a TileIndex (its main_index) or of a Box."""
    return tuple(getattr(index, "main_index", index))


def stitch(tile_maps, indexes, image_size, blend="hann"):
    """Full-image float32 [H, W] map from per-tile maps.

    ``tile_maps[k]`` is a 2-D array of tile ``indexes[k]``'s size (height, width); ``indexes`` holds
    TileIndex objects (their ``main_index`` is used) or Boxes; ``image_size`` is an int or (width, height).
    Every image pixel must be covered by some tile.
    """
    if blend not in BLENDS:
        raise InputError("blend", f"must be one of {', '.join(BLENDS)}, got {blend!r}")
    width, height = as_width_height(image_size, "image_size")
    tile_maps, indexes = list(tile_maps), list(indexes)
    if len(tile_maps) != len(indexes):
        raise InputError("tile_maps", f"{len(tile_maps)} tile maps for {len(indexes)} tile indexes")
    mean = np.zeros((height, width), np.float32)
    total_weight = np.zeros((height, width), np.float32)
    for tile_map, index in zip(tile_maps, indexes):
        x, y, tile_w, tile_h = _box_of(index)
        if x < 0 or y < 0 or x + tile_w > width or y + tile_h > height:
            raise InputError("indexes", f"tile {x},{y} {tile_w}x{tile_h} lies outside the {width}x{height} image")
        if np.shape(tile_map) != (tile_h, tile_w):
            raise InputError("tile_maps", f"map of shape {np.shape(tile_map)} for a tile of height {tile_h} "
                                          f"and width {tile_w}")
        weight = _window_1d(tile_h, blend)[:, None] * _window_1d(tile_w, blend)[None, :]
        region = (slice(y, y + tile_h), slice(x, x + tile_w))
        total_weight[region] += weight
        mean[region] += (np.asarray(tile_map, np.float32) - mean[region]) * (weight / total_weight[region])
    if not total_weight.all():
        rows, cols = np.nonzero(total_weight == 0)
        raise InputError("indexes", f"{len(rows)} pixels are covered by no tile (e.g. x={cols[0]}, y={rows[0]})")
    return mean
