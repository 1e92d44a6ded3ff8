"""The prediction picture: a small image is enlarged, and its caption fits inside the overlay."""
import cv2
import numpy as np
import pytest

from src.evaluation.visualize import MIN_PICTURE_SIDE, fitted_scale, prediction_picture


@pytest.mark.parametrize("side", [64, 224, 1024])
def test_the_caption_fits_the_overlay_and_small_images_are_enlarged(side):
    rgb = np.zeros((side, side, 3), np.uint8)
    normalised = np.zeros((side, side), np.float32)
    picture = prediction_picture(rgb, normalised, normalised > 0.5, 0.555, "REVIEW", 0.48)
    height = side * -(-MIN_PICTURE_SIDE // side)   # enlarged by a whole factor
    assert picture.shape[0] == height
    overlay = picture[:, height:2 * height]
    # the caption's pixels (orange on the black image's dark-blue map) stay inside the overlay, right margin kept
    caption = np.argwhere((overlay[:, :, 0] > 150) & (overlay[:, :, 1] > 100) & (overlay[:, :, 2] < 80))
    assert len(caption) > 0 and caption[:, 1].max() < height - 4


def test_fitted_scale_shrinks_only_what_does_not_fit():
    lines = ["NG  score 0.555"]
    assert fitted_scale(lines, 4000, 0.8) == 0.8
    scale = fitted_scale(lines, 120, 0.8)
    assert scale < 0.8
    assert cv2.getTextSize(lines[0], cv2.FONT_HERSHEY_SIMPLEX, scale, 2)[0][0] <= 120 - 16 + 2
