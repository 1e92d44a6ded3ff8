"""src/patchcore/scoring.py: map composition, smoothing as the reference does it, and the image score."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import src  # noqa: F401
from src.patchcore.scoring import build_image_score, compose_anomaly_map, gaussian_smooth
from src.tiling.plan import MultiResolutionHRImageSpliter


def test_compose_stitches_merges_and_smooths_once():
    import cv2
    plan = MultiResolutionHRImageSpliter(64, 32, 16)
    grids = [(index, np.full((4, 4), 0.25, np.float32)) for index in plan]
    assert np.allclose(compose_anomaly_map(grids, (64, 64), None, sigma=4.0), 0.25)
    thumbnail = np.zeros((2, 2), np.float32)
    thumbnail[0, 0] = 1.0
    upsampled = cv2.resize(thumbnail, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(compose_anomaly_map(grids, (64, 64), thumbnail, merge="max", sigma=0),
                       np.maximum(0.25, upsampled))
    assert np.allclose(compose_anomaly_map(grids, (64, 64), thumbnail, merge="mean", sigma=0), (0.25 + upsampled) / 2)


def test_image_score_dilutes_a_single_pixel_but_not_a_cell_sized_defect():
    spike = np.zeros((64, 64), np.float32)
    spike[10, 10] = 1.0
    blob = np.zeros((64, 64), np.float32)
    blob[30:38, 30:38] = 1.0
    assert build_image_score({"policy": "window_max", "window": 8})(spike, []) == pytest.approx(1 / 64)
    assert build_image_score({"policy": "window_max", "window": 8})(blob, []) == pytest.approx(1.0)
    assert build_image_score({"policy": "window_max", "window": 1})(spike, []) == 1.0


def test_anomaly_map_matches_reference_upsampling_and_smoothing():
    grid = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    torch_up = F.interpolate(torch.from_numpy(grid)[None, None], size=(224, 224), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    (tile,) = MultiResolutionHRImageSpliter((224, 224), 224)   # a 224-pixel model: one tile covers the image
    amap = compose_anomaly_map([(tile, grid)], (224, 224), sigma=4)
    np.testing.assert_allclose(amap, gaussian_filter(torch_up, sigma=4), atol=1e-5)
    assert build_image_score("max")(amap, [grid]) == pytest.approx(grid.max())


@pytest.mark.parametrize("shape, sigma", [((2048, 96), 4.0), ((8, 8), 4.0), ((3, 40), 2.5), ((1, 1), 4.0)])
def test_gaussian_smoothing_is_the_references_gaussian_filter_at_any_size(shape, sigma):
    # maps smaller than the kernel (4 sigma each side) are mirrored as scipy mirrors them
    amap = np.random.default_rng(2).random(shape).astype(np.float32)
    smoothed = gaussian_smooth(amap, sigma)
    assert smoothed.dtype == np.float32 and smoothed.shape == shape
    np.testing.assert_allclose(smoothed, gaussian_filter(amap, sigma=sigma), rtol=2e-6, atol=1e-7)
