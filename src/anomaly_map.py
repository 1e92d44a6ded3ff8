"""Patch-score grids -> anomaly maps and image scores, as in the reference.

Map: bilinear (half-pixel, like torch ``align_corners=False``) upsampling of the patch-score grid to the
input size, then a gaussian of sigma 4. Image score: the maximum patch score.
"""
import cv2
import numpy as np
from scipy.ndimage import gaussian_filter


def image_score(patch_grid):
    return float(np.max(patch_grid))


def anomaly_map(patch_grid, size, sigma=4.0):
    """[h, w] patch scores -> [H, W] float32 map; ``size`` is (H, W)."""
    height, width = size
    upsampled = cv2.resize(np.asarray(patch_grid, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return gaussian_filter(upsampled, sigma=sigma).astype(np.float32) if sigma else upsampled
