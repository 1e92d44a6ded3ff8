"""The fast grouped-convolution aggregation equals the reference's literal unfold/pool/resize chain."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms

from benchmarks.torch_reference import literal_reference
from src.patchcore.aggregation import LocalAggregation, adaptive_pool_matrix, largest_group_count, to_patch_rows


def test_adaptive_pool_matrix_matches_torch():
    x = torch.randn(3, 1, 37)
    expected = F.adaptive_avg_pool1d(x, 10).squeeze(1).numpy()
    got = x.squeeze(1).numpy().astype(np.float64) @ adaptive_pool_matrix(37, 10).T
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("channels,grids,merge,pre,target", [
    ((512, 1024), ((8, 8), (4, 4)), 3, 1024, 1024),   # the published WRN50 setting
    ((16, 24), ((9, 7), (5, 4)), 3, 40, 30),           # windows straddle channels and layers
    ((32, 96), ((6, 6), (3, 3)), 1, 64, 48),
    ((20,), ((5, 5),), 5, 64, 64),
])
def test_fast_aggregation_equals_literal(channels, grids, merge, pre, target):
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((2, c, h, w)).astype(np.float32) for c, (h, w) in zip(channels, grids)]
    expected = literal_reference([torch.from_numpy(x) for x in layers], merge, pre, target)
    cell = LocalAggregation(channels, merge, pre, target)
    out = cell(*[ms.Tensor(x) for x in layers]).asnumpy()
    rows, grid = to_patch_rows(out)
    assert grid == grids[0]
    assert rows.shape == expected.shape
    assert np.abs(rows - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_published_setting_runs_as_depthwise_convolutions():
    cell = LocalAggregation((512, 1024), 3, 1024, 1024)
    assert cell.concat_only
    assert [groups for _, groups in cell.grouped_kernels] == [512, 512]
    # layer3's rows each read 2 channels: depthwise over all 1024 channels, then pair sums.
    assert [conv.group for conv in cell.convs] == [512, 1024]
    assert cell.channel_sums == (1, 2)


def test_depthwise_form_equals_grouped_convolution():
    rng = np.random.default_rng(0)
    cell = LocalAggregation((512, 1024), 3, 1024, 1024)
    layers = [rng.standard_normal((2, 512, 6, 6)).astype(np.float32),
              rng.standard_normal((2, 1024, 3, 3)).astype(np.float32)]
    out = cell(*[ms.Tensor(x) for x in layers]).asnumpy()
    expected = [F.conv2d(torch.from_numpy(x), torch.from_numpy(kernel), padding=1, groups=groups)
                for x, (kernel, groups) in zip(layers, cell.grouped_kernels)]
    expected = torch.cat([expected[0], F.interpolate(expected[1], size=(6, 6), mode="bilinear",
                                                     align_corners=False)], dim=1).numpy()
    assert np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()


def test_largest_group_count_dense_when_mixed():
    weight = np.ones((4, 4, 1, 1))
    assert largest_group_count(weight) == 1
    assert largest_group_count(np.eye(4).reshape(4, 4, 1, 1)) == 4
