"""Tile plan for high-resolution images (HiAD-style ``MultiResolutionHRImageSpliter``).

A plan is the row-major list of tiles covering an image of ``image_size``. Along each axis the
tiles start at 0, stride, 2*stride, ... and one last tile is shifted inward so that it ends exactly
at the border: tiles never leave the image and are never padded, so there are
``ceil((W - p) / s) + 1`` tiles per axis.

With ``ds_factors`` (e.g. ``[0, 1]``) each tile also records, for every factor k > 0, the tile of the
coarser plan (patch and stride scaled by 2**k, in full-resolution pixels) that contains it; resized
by 2**-k that region is a patch-sized view of the tile's surroundings at image_size / 2**k.
``str(index)`` is the JSON HiAD prints, e.g.
``{"main_index": {"x": 0, "y": 0, "width": 512, "height": 512}, "low_resolution_indexes": null}``.
"""
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2

from src.data.sample import as_width_height
from src.utils.errors import InputError


class Box(NamedTuple):
    """A rectangle in full-resolution pixels."""
    x: int
    y: int
    width: int
    height: int

    def to_dict(self):
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data):
        try:
            values = [data[key] for key in cls._fields]
        except (KeyError, TypeError):
            raise InputError(f"a box needs the keys {', '.join(cls._fields)}, got {data!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InputError(f"box values must be integers, got {data!r}")
        return cls(*values)


@dataclass(frozen=True)
class TileIndex:
    """One tile: its box, the containing boxes at coarser levels (or None) and its grid position."""
    main_index: Box
    low_resolution_indexes: list = None
    row: int = 0
    col: int = 0

    def __hash__(self):
        return hash((self.main_index, self.row, self.col))

    @property
    def input_size(self):
        """(w, h) the network sees: the tile's own size (tiles are not resized)."""
        return self.main_index.width, self.main_index.height

    def views(self, image):
        """The network inputs of this view of ``image``: the tile, then its coarser levels (``crop_levels``)."""
        return crop_levels(image, self)

    def json_dict(self):
        """The two keys HiAD prints (no grid position)."""
        low = None if self.low_resolution_indexes is None else [b.to_dict() for b in self.low_resolution_indexes]
        return {"main_index": self.main_index.to_dict(), "low_resolution_indexes": low}

    def __str__(self):
        return json.dumps(self.json_dict())

    def to_dict(self):
        return {**self.json_dict(), "row": self.row, "col": self.col}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or "main_index" not in data:
            raise InputError(f"a tile index needs 'main_index', got {data!r}")
        low = data.get("low_resolution_indexes")
        if low is not None and not isinstance(low, list):
            raise InputError(f"'low_resolution_indexes' must be null or a list, got {low!r}")
        row, col = data.get("row", 0), data.get("col", 0)
        if not (isinstance(row, int) and isinstance(col, int) and row >= 0 and col >= 0):
            raise InputError(f"tile row/col must be non-negative integers, got {row!r}, {col!r}")
        return cls(Box.from_dict(data["main_index"]),
                   None if low is None else [Box.from_dict(b) for b in low], row, col)


Index = TileIndex  # HiAD's name for a tile index


@dataclass(frozen=True)
class WholeImage:
    """The whole image resized (area averaging) to ``size`` = (w, h): the thumbnail branch's view, used where a
    tile's TileIndex is (same ``input_size``, ``views``, ``to_dict``)."""
    size: tuple

    @property
    def input_size(self):
        return tuple(self.size)

    def views(self, image):
        return [cv2.resize(image, tuple(self.size), interpolation=cv2.INTER_AREA)]

    def to_dict(self):
        return {"whole_image": list(self.size)}


def fusion_weight_values(fusion_weights):
    """``fusion_weights`` as a new list of floats: non-negative, finite, with a positive sum."""
    try:
        weights = [float(w) for w in fusion_weights]
    except (TypeError, ValueError):
        raise InputError("fusion_weights", f"must be a list of numbers, got {fusion_weights!r}") from None
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise InputError("fusion_weights", f"must be non-negative with a positive sum, got {weights}")
    return weights


def check_fusion_weights(fusion_weights, ds_factors):
    """``fusion_weights`` as floats (a new list) or None; one non-negative weight per ds_factor, positive sum."""
    if fusion_weights is None:
        if ds_factors is not None and len(ds_factors) > 1:
            raise InputError("fusion_weights", f"ds_factors {list(ds_factors)} need one fusion weight each")
        return None
    weights = fusion_weight_values(fusion_weights)
    factors = [0] if ds_factors is None else list(ds_factors)
    if len(weights) != len(factors):
        raise InputError("fusion_weights", f"{len(weights)} weights for {len(factors)} resolutions "
                                           f"(ds_factors {ds_factors}): give one weight per factor")
    return weights


def tile_starts(length, patch, stride):
    """Start offsets along one axis; the last tile is moved inward to end at ``length``."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def _containing(starts, patch, begin, end):
    """The start whose [s, s + patch) overlaps [begin, end) most; ties go to the closest centre."""
    def key(start):
        overlap = min(end, start + patch) - max(begin, start)
        return -overlap, abs(2 * start + patch - begin - end)
    return min(starts, key=key)


class MultiResolutionHRImageSpliter(Sequence):
    """Row-major sequence of :class:`TileIndex` covering ``image_size`` (see module docstring).

    ``image_size``, ``patch_size`` and ``stride`` take an int or (width, height); ``stride`` defaults
    to ``patch_size`` (no overlap) and must not exceed it (every pixel must be covered).
    ``ds_factors`` lists the resolutions to fuse as powers of two, starting with 0 (full resolution).
    """

    def __init__(self, image_size, patch_size, stride=None, ds_factors=None):
        self.image_size = as_width_height(image_size, "image_size")
        self.patch_size = as_width_height(patch_size, "patch_size")
        self.stride = self.patch_size if stride is None else as_width_height(stride, "stride")
        if any(p > i for p, i in zip(self.patch_size, self.image_size)):
            raise InputError("patch_size", f"{self.patch_size} is larger than image_size {self.image_size}")
        if any(s > p for s, p in zip(self.stride, self.patch_size)):
            raise InputError("stride", f"{self.stride} exceeds patch_size {self.patch_size}: pixels would be skipped")
        self.ds_factors = None if ds_factors is None else self._checked_factors(ds_factors)

        xs, ys = (tile_starts(i, p, s) for i, p, s in zip(self.image_size, self.patch_size, self.stride))
        self.rows, self.cols = len(ys), len(xs)
        coarse_levels = [self._coarse_starts(k) for k in (self.ds_factors or [])[1:]]
        width, height = self.patch_size
        self._indexes = []
        for row, y in enumerate(ys):
            for col, x in enumerate(xs):
                low = None
                if coarse_levels:
                    low = [Box(_containing(cx, cw, x, x + width), _containing(cy, ch, y, y + height), cw, ch)
                           for (cx, cw), (cy, ch) in coarse_levels]
                self._indexes.append(TileIndex(Box(x, y, width, height), low, row, col))

    def _checked_factors(self, ds_factors):
        factors = list(ds_factors)  # a copy: the caller's list is never touched
        if (not factors or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in factors)
                or factors[0] != 0 or len(set(factors)) != len(factors)):
            raise InputError("ds_factors", f"must be distinct non-negative ints starting with 0, got {ds_factors!r}")
        for k in factors[1:]:
            region = tuple(p << k for p in self.patch_size)
            if any(r > i for r, i in zip(region, self.image_size)):
                raise InputError("ds_factors", f"factor {k} needs a {region[0]}x{region[1]} region, larger than "
                                               f"image_size {self.image_size[0]}x{self.image_size[1]}")
        return factors

    def _coarse_starts(self, k):
        """Per axis (starts, size) of the coarser plan at factor ``k``."""
        return [(tile_starts(i, p << k, s << k), p << k)
                for i, p, s in zip(self.image_size, self.patch_size, self.stride)]

    def __len__(self):
        return len(self._indexes)

    def __getitem__(self, item):
        return self._indexes[item]

    def __repr__(self):
        return (f"MultiResolutionHRImageSpliter(image_size={self.image_size}, patch_size={self.patch_size}, "
                f"stride={self.stride}, ds_factors={self.ds_factors}): {self.rows}x{self.cols} tiles")

    def params(self):
        """Constructor arguments as plain JSON values."""
        return {"image_size": list(self.image_size), "patch_size": list(self.patch_size),
                "stride": list(self.stride), "ds_factors": None if self.ds_factors is None else list(self.ds_factors)}


def crop(image, index):
    """The tile's pixels (a view of ``image``, HxW[xC])."""
    x, y, w, h = index.main_index
    if image.shape[0] < y + h or image.shape[1] < x + w:
        raise InputError(f"tile {index} lies outside the {image.shape[1]}x{image.shape[0]} image")
    return image[y:y + h, x:x + w]


def crop_levels(image, index):
    """[the tile] + each low-resolution region resized (area averaging) to the tile's size."""
    tile = crop(image, index)
    size = (index.main_index.width, index.main_index.height)
    return [tile] + [cv2.resize(image[b.y:b.y + b.height, b.x:b.x + b.width], size, interpolation=cv2.INTER_AREA)
                     for b in index.low_resolution_indexes or []]


def plan_image_size(indexes):
    """(w, h) of the plan: its parameter, or the extent of its tiles."""
    if isinstance(indexes, MultiResolutionHRImageSpliter):
        return indexes.image_size
    return (max(i.main_index.x + i.main_index.width for i in indexes),
            max(i.main_index.y + i.main_index.height for i in indexes))
