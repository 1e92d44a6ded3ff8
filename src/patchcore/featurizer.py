"""Patch features of views of an image: tiles (optionally fused with coarser context) and the whole image.

Tiles are fed to the network at their full resolution, so one feature cell covers as many image pixels as
the backbone's stride. With a multi-resolution plan (``ds_factors``), a tile's coarser region (2**k times
larger, resized to the tile's size) is run through the same network; the part of its feature map that lies
over the tile is cut out and bilinearly resized to the tile's own feature grid, and the levels are combined
as ``sum_k w_k f_k / sum_k w_k`` (``fusion_weights``; dividing by the sum keeps the features' scale, so
``[1, 1]`` and ``[0.5, 0.5]`` are the same model).
"""
import itertools
import time
import weakref

import numpy as np


COMPILED = weakref.WeakKeyDictionary()   # network -> the input shapes it has run (compiled) with


def interpolation_matrix(out_len, in_len, start, length):
    """[out_len, in_len] float32 bilinear weights resampling the window [start, start + length) of an axis
    of ``in_len`` cells to ``out_len`` cells (half-pixel centres, edge values repeated)."""
    centres = np.clip(start + (np.arange(out_len) + 0.5) * (length / out_len) - 0.5, 0, in_len - 1)
    left = np.floor(centres).astype(np.int64)
    right = np.minimum(left + 1, in_len - 1)
    fraction = (centres - left).astype(np.float32)
    matrix = np.zeros((out_len, in_len), np.float32)
    np.add.at(matrix, (np.arange(out_len), left), 1 - fraction)
    np.add.at(matrix, (np.arange(out_len), right), fraction)
    return matrix


def context_features(features, region, tile, grid):
    """The part of ``features`` [D, gh, gw] (computed on ``region``, a Box) lying over ``tile`` (a Box inside
    it), resized to ``grid`` = (h, w): [D, h, w] float32."""
    _, gh, gw = features.shape
    rows = interpolation_matrix(grid[0], gh, (tile.y - region.y) * gh / region.height, tile.height * gh / region.height)
    cols = interpolation_matrix(grid[1], gw, (tile.x - region.x) * gw / region.width, tile.width * gw / region.width)
    return np.matmul(np.matmul(rows, features), cols.T)


def relative_weights(fusion_weights):
    """``fusion_weights`` divided by their sum."""
    total = float(sum(fusion_weights))
    return [w / total for w in fusion_weights]


def fuse_levels(level_features, indexes, weights):
    """``sum_k w_k f_k`` of the tiles ``indexes``: ``level_features[k]`` is [B, D, h, w] computed on level k's
    views (None where ``weights[k]`` is 0), every view at the tile's size; levels above 0 are cut to the
    tile's region of their view first. [B, D, h, w] float32."""
    fused = None
    for level, (features, weight) in enumerate(zip(level_features, weights)):
        if weight == 0:
            continue
        if level > 0:  # every level's input has the tile's size, hence the tile's feature grid
            features = np.stack([context_features(f, index.low_resolution_indexes[level - 1], index.main_index,
                                                  features.shape[2:]) for f, index in zip(features, indexes)])
        scaled = features if weight == 1 else weight * features
        fused = scaled if fused is None else fused + scaled
    return fused


def network_input(rgb_images, mean, std):
    """[B, 3, H, W] float32 network input of equally sized HxWx3 uint8 RGB images: /255, then (x - mean) / std.

    The one definition of the input normalisation: training and inference (Featurizer) and the files
    preprocess.py writes for the C++ runner all go through it, so the deployed model sees the same numbers.
    """
    # In place and channels last until the one final transposing copy: the same operations on every element as
    # ``(x / 255 - mean) / std`` (bit-identical), without three temporary arrays (4 tiles of 512: 37 -> 17 ms)
    chunk = np.stack(rgb_images).astype(np.float32)
    chunk /= np.float32(255)
    chunk -= np.asarray(mean, np.float32)
    chunk /= np.asarray(std, np.float32)
    return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))


class Featurizer:
    """Backbone features of tiles and thumbnails, ``batch_size`` views at a time.

    ``extractor``: a PatchFeatureExtractor (images [B, 3, H, W] -> [B, D, h, w]); ``mean``/``std``: the
    input normalisation; ``fusion_weights``: one weight per resolution of the plan, or None (tile only).

    The network sees one input at a time, so that a view's features do not depend on what it is batched with:
    MindSpore's oneDNN picks other kernels for other batch sizes (seeded WRN50: features of one image alone and in
    a batch of 8 differed by 3.5e-7 relative, its patch scores by 1.7e-6). On 2 CPU cores this costs nothing from
    224 pixels up (8 images: WRN50 at 224 px 1.24 s one at a time, 1.23 s as a batch; MobileNetV2 at 512 px 0.71
    s against 0.80 s); only tiny inputs pay the per-call overhead (64 px: 0.22 s against 0.12 s). It also leaves
    one graph to compile instead of one per batch size.

    ``compile_seconds``: the time of the network's first call for each input size (MindSpore compiles its graph
    then: about 1.4 s for MobileNetV2), kept apart so that per-image figures do not carry it. MindSpore's own
    compile cache is not used: across runs it handed a changed network (another layer set) the graph cached for
    the first one, with the wrong output size (MindSpore 2.10, measured).
    """

    def __init__(self, extractor, mean, std, batch_size, fusion_weights=None):
        self.extractor = extractor
        self.mean, self.std = mean, std
        self.batch_size = int(batch_size)
        self.weights = None if fusion_weights is None else relative_weights(fusion_weights)
        self.compile_seconds = 0.0

    def network(self, rgb_images):
        """[B, D, h, w] float32 features of equally sized HxWx3 uint8 images, one at a time (class docstring)."""
        outputs = [self._call(network_input([image], self.mean, self.std)) for image in rgb_images]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _call(self, chunk):
        import mindspore as ms
        compiled = COMPILED.setdefault(self.extractor, set())   # featurizers of one model may share a network
        started = time.perf_counter()
        features = self.extractor(ms.Tensor(chunk)).asnumpy()
        if chunk.shape not in compiled:
            self.compile_seconds += time.perf_counter() - started
            compiled.add(chunk.shape)
        return features

    def view_batches(self, views):
        """Yield [B, D, h, w] features of ``views``, ``batch_size`` at a time across images: ``views`` is an
        iterable of (HxWx3 image, view), a view being a TileIndex or a WholeImage (``src/tiling/plan.py``)."""
        weights = self.weights or [1.0]
        batch = []
        for view in itertools.chain(views, [None]):
            if view is not None:
                batch.append(view)
            if batch and (len(batch) == self.batch_size or view is None):
                yield self._features(batch, weights)
                batch = []

    def _features(self, batch, weights):
        levels = [view.views(image)[:len(weights)] for image, view in batch]
        features = [None if weight == 0 else self.network([np.ascontiguousarray(v[level]) for v in levels])
                    for level, weight in enumerate(weights)]
        return fuse_levels(features, [view for _, view in batch], weights)
