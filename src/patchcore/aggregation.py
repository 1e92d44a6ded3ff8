"""PatchCore locally aware patch features, as a MindSpore cell on top of the backbone.

Reference semantics (amazon-science/patchcore-inspection): for each layer, every location's
``merge_size`` x ``merge_size`` neighbourhood (stride 1, zero padding) is flattened in (channel, ky, kx)
order and adaptive-average-pooled to ``pretrain_embed_dimension``; deeper grids are bilinearly resized
(half-pixel) to the first layer's grid; the per-layer vectors are concatenated and adaptive-average-pooled
to ``target_embed_dimension``.

Every step is linear, so each layer's chain "unfold -> pool -> slice of the final pool" is one fixed
convolution. Its weights are block-diagonal over channels for the usual sizes (1024 from 512 or 1024
channels), so it runs as a grouped convolution: a few MFLOP instead of the literal unfold's gigabytes
of intermediates. Resizing commutes with the per-location linear map, so it is applied after it.

When each output channel reads several input channels (1024 channels -> 512 rows: pairs), that grouped
convolution runs as a depthwise one (every input channel with its own kernel) whose outputs are then
summed in groups: the same arithmetic, but MindSpore Lite (which splits a grouped convolution into one
small convolution per group) and PyTorch run a depthwise convolution much faster (WRN50's layer3 map at
224x224, 2 threads: Lite 7.8 -> 0.2 ms, PyTorch 0.7 -> 0.16 ms; MindSpore's oneDNN about 1 ms slower).
"""
import math

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from src.backbones.networks import feature_channels


def adaptive_pool_matrix(in_len, out_len):
    """The [out_len, in_len] matrix of ``adaptive_avg_pool1d`` (windows floor(i*L/D) .. ceil((i+1)*L/D))."""
    matrix = np.zeros((out_len, in_len), np.float64)
    for i in range(out_len):
        start = (i * in_len) // out_len
        end = -((-(i + 1) * in_len) // out_len)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def layer_maps(channels, merge_size, pretrain_dim, target_dim):
    """Per layer: (first output row, [rows, C, m, m] weights) of the composed linear map."""
    final = adaptive_pool_matrix(len(channels) * pretrain_dim, target_dim)
    maps = []
    for k, c in enumerate(channels):
        composed = final[:, k * pretrain_dim:(k + 1) * pretrain_dim] @ \
            adaptive_pool_matrix(c * merge_size * merge_size, pretrain_dim)
        rows = np.flatnonzero(np.abs(composed).sum(axis=1))
        first, last = int(rows[0]), int(rows[-1]) + 1
        maps.append((first, composed[first:last].reshape(last - first, c, merge_size, merge_size)))
    return maps


def largest_group_count(weight):
    """Largest g such that output chunk j reads only input-channel chunk j (block-diagonal)."""
    rows, c = weight.shape[:2]
    touches = np.abs(weight).sum(axis=(2, 3)) > 0  # [rows, C]
    for g in sorted((d for d in range(1, math.gcd(rows, c) + 1) if math.gcd(rows, c) % d == 0), reverse=True):
        blocks = touches.reshape(g, rows // g, g, c // g).any(axis=(1, 3))
        if not (blocks & ~np.eye(g, dtype=bool)).any():
            return g
    return 1


def grouped_weight(weight, groups):
    """Dense [rows, C, m, m] -> grouped-conv weight [rows, C/g, m, m]."""
    rows, c = weight.shape[:2]
    rg, cg = rows // groups, c // groups
    blocks = weight.reshape(groups, rg, groups, cg, *weight.shape[2:])
    return np.stack([blocks[j, :, j] for j in range(groups)]).reshape(rows, cg, *weight.shape[2:])


def channel_sum_size(rows, channels, groups):
    """Input channels summed into each output row when the grouped convolution runs depthwise; 1: as is.

    That applies when every group has one output row and several input channels (rows == groups < C).
    """
    return channels // groups if rows == groups < channels else 1


class LocalAggregation(nn.Cell):
    """Layer feature maps -> [B, target_embed_dimension, h0, w0] patch features."""

    def __init__(self, channels, merge_size=3, pretrain_embed_dimension=1024, target_embed_dimension=1024):
        super().__init__()
        self.target_dim = int(target_embed_dimension)
        maps = layer_maps(list(channels), int(merge_size), int(pretrain_embed_dimension), self.target_dim)
        self.row_ranges = [(first, first + w.shape[0]) for first, w in maps]
        # Per layer: (grouped-conv weight [rows, C/g, m, m] float32, groups g): the map as a grouped convolution.
        self.grouped_kernels = []
        convs, sums = [], []
        for _, weight in maps:
            groups = largest_group_count(weight)
            kernel = grouped_weight(weight, groups).astype(np.float32)
            self.grouped_kernels.append((kernel, groups))
            rows, channels = weight.shape[:2]
            sums.append(channel_sum_size(rows, channels, groups))
            if sums[-1] > 1:  # depthwise: row j's kernel slice for channel c of its group, in channel order
                kernel = kernel.reshape(channels, 1, *kernel.shape[2:])
                groups = rows = channels
            conv = nn.Conv2d(channels, rows, int(merge_size), stride=1, pad_mode="pad",
                             padding=int(merge_size) // 2, group=groups, has_bias=False)
            conv.weight.set_data(ms.Tensor(kernel))
            conv.weight.requires_grad = False
            convs.append(conv)
        self.convs = nn.CellList(convs)
        self.channel_sums = tuple(sums)
        self.reduce_sum = ops.ReduceSum(keep_dims=False)
        bounds = [b for r in self.row_ranges for b in r]
        # Concatenation is enough when the layers' output rows tile [0, target) in order (the usual case).
        self.concat_only = bounds[0] == 0 and bounds[-1] == self.target_dim and \
            all(bounds[i] == bounds[i + 1] for i in range(1, len(bounds) - 1, 2))

    def construct(self, *layer_features):
        size = layer_features[0].shape[2:]
        outputs = []
        for k, conv in enumerate(self.convs):
            out = conv(layer_features[k])
            n = self.channel_sums[k]
            if n > 1:
                b, c, h, w = out.shape
                out = self.reduce_sum(ops.reshape(out, (b, c // n, n, h, w)), 2)
            if k > 0:
                out = ops.interpolate(out, size=size, mode="bilinear", align_corners=False)
            outputs.append(out)
        if self.concat_only:
            return ops.concat(outputs, axis=1)
        total = None
        for k, out in enumerate(outputs):
            first, last = self.row_ranges[k]
            out = ops.pad(out, (0, 0, 0, 0, first, self.target_dim - last))
            total = out if total is None else total + out
        return total


class PatchFeatureExtractor(nn.Cell):
    """Backbone + local aggregation: images [B, 3, H, W] -> patch features [B, D, h, w]."""

    def __init__(self, backbone, patch_config):
        super().__init__()
        self.backbone = backbone
        self.aggregation = LocalAggregation(
            feature_channels(patch_config["backbone_name"], patch_config["layers_to_extract_from"]),
            patch_config["merge_size"], patch_config["pretrain_embed_dimension"],
            patch_config["target_embed_dimension"])

    def construct(self, images):
        return self.aggregation(*self.backbone(images))


def to_patch_rows(features):
    """[B, D, h, w] numpy -> ([B*h*w, D] float32 C-contiguous, (h, w))."""
    b, d, h, w = features.shape
    return np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(b * h * w, d), np.float32), (h, w)
