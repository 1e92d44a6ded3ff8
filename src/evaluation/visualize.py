"""Per-image pictures: image | heat-map overlay | ground truth. Callers write into a staged folder."""
import cv2
import numpy as np

from src.decisions.thresholds import NG, REVIEW


def comparison_picture(rgb, amap, mask, vmin, vmax):
    """RGB uint8 [H, 3W, 3]; the map is scaled with the run-wide ``vmin``/``vmax`` so colours compare."""
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    overlay = cv2.addWeighted(rgb, 0.5, heat, 0.5, 0.0)
    gt = np.repeat((mask > 0).astype(np.uint8)[:, :, None] * 255, 3, axis=2)
    return np.concatenate([rgb, overlay, gt], axis=1)


def save_picture(path, rgb):
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"{path}: could not write picture")


def _text(canvas, text, origin, scale, colour):
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)),
                cv2.LINE_AA)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, int(2 * scale)), cv2.LINE_AA)


def colour_bar(height, width=None):
    """RGB uint8 [height, width, 3]: the 0 (bottom) .. 1 (top) scale of ``prediction_picture``'s heat map, ticks at
    0, 0.5 (the threshold) and 1."""
    width = width or max(40, height // 8)
    values = np.linspace(1.0, 0.0, height)[:, None].repeat(width // 3, axis=1)
    bar = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:, :bar.shape[1]] = bar
    scale = max(0.35, height / 700)
    for value in (1.0, 0.5, 0.0):
        y = int(round((1 - value) * (height - 1)))
        canvas[max(0, y - 1):y + 1, :bar.shape[1] + 4] = 0
        _text(canvas, f"{value:g}", (bar.shape[1] + 6, min(height - 4, max(14, y + 5))), scale, (255, 255, 255))
    return canvas


def prediction_picture(rgb, normalised_map, decision, score, label, review_score=None):
    """RGB uint8: the image | its heat map (normalised: one fixed 0-1 scale for every image, 0.5 at the image
    threshold) with the outline of the predicted regions (``decision``: bool map) and the image's normalised score
    and its label written on it (a REVIEW image also the score its band starts at, ``review_score``) | the colour
    bar."""
    heat = cv2.applyColorMap((np.clip(normalised_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    overlay = np.ascontiguousarray(cv2.addWeighted(rgb, 0.5, heat, 0.5, 0.0))
    height = rgb.shape[0]
    contours, _ = cv2.findContours(decision.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), max(1, height // 224))
    colour = {NG: (255, 64, 64), REVIEW: (255, 176, 0)}.get(label, (64, 255, 64))
    scale = max(0.4, height / 600)
    _text(overlay, f"{label}  score {score:.3f}", (8, int(28 * scale) + 4), scale, colour)
    if label == REVIEW and review_score is not None:   # a second line: a 224-pixel map is narrow
        _text(overlay, f"review from {review_score:.3f}", (8, 2 * int(28 * scale) + 4), scale, colour)
    return np.concatenate([rgb, overlay, colour_bar(height)], axis=1)
