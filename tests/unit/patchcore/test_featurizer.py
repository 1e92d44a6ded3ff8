"""src/patchcore/featurizer.py: context features of the coarser resolutions and their fusion weights."""
import numpy as np

import src  # noqa: F401
from src.patchcore.featurizer import context_features
from src.tiling.plan import Box, MultiResolutionHRImageSpliter


def test_context_features_cut_the_tile_out_of_the_coarser_map():
    # A feature map linear in x and y (one channel per axis) over a 64x64 region: the part over a 32x32 tile
    # at (32, 0) resized to 4x4 cells must be the ramp sampled at the tile's own cell centres.
    gh = gw = 8
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
    features = np.stack([xs, ys])                        # cell (i, j) centre at pixel (8 j + 4, 8 i + 4)
    out = context_features(features, Box(0, 0, 64, 64), Box(32, 0, 32, 32), (4, 4))
    centres = (np.arange(4) + 0.5) * 8                   # tile cell centres in tile pixels
    assert np.allclose(out[0], ((32 + centres) / 8 - 0.5)[None, :].repeat(4, 0))
    assert np.allclose(out[1], (centres / 8 - 0.5)[:, None].repeat(4, 1).clip(0))


class FakeExtractor:
    """Stands in for the network: the normalised input sampled every 8 pixels (a [B, 3, H/8, W/8] grid)."""

    def __call__(self, images):
        import mindspore as ms
        return ms.Tensor(images.asnumpy()[:, :, 4::8, 4::8].copy())


def test_fusion_weights_the_tile_and_its_context_and_keeps_the_scale():
    from src.patchcore.featurizer import Featurizer
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)
    plan = MultiResolutionHRImageSpliter(128, 32, ds_factors=[0, 1])

    def features(weights):
        featurizer = Featurizer(FakeExtractor(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4, weights)
        return np.concatenate(list(featurizer.view_batches([(image, index) for index in plan])))
    tile_only, context_only = features([1.0, 0.0]), features([0.0, 1.0])
    assert np.array_equal(tile_only, features(None))
    assert not np.allclose(tile_only, context_only)
    np.testing.assert_allclose(features([1.0, 1.0]), (tile_only + context_only) / 2, rtol=1e-6)
    np.testing.assert_allclose(features([3.0, 1.0]), 0.75 * tile_only + 0.25 * context_only, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features([2.0, 2.0]), features([0.5, 0.5]), rtol=1e-6)
