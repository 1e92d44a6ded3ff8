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


MIN_PICTURE_SIDE = 256   # a smaller image is enlarged for its picture: captions and outlines stay legible


def _text(canvas, text, origin, scale, colour):
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)),
                cv2.LINE_AA)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, int(2 * scale)), cv2.LINE_AA)


def fitted_scale(lines, width, scale):
    """The font scale at most ``scale`` at which every one of ``lines`` fits in ``width`` pixels (8 px margins)."""
    widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.0, max(2, int(4 * scale)))[0][0]
                 for line in lines)
    return min(scale, (width - 16) / max(widest, 1))


def colour_bar(height, width=None):
    """RGB uint8 [height, width, 3]: the 0 (bottom) .. 1 (top) scale of ``prediction_picture``'s heat map, ticks at
    0, 0.5 (the threshold) and 1."""
    width = width or max(40, height // 8)
    values = np.linspace(1.0, 0.0, height)[:, None].repeat(width // 3, axis=1)
    bar = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:, :bar.shape[1]] = bar
    scale = fitted_scale(["0.5"], width - bar.shape[1] + 10, max(0.35, height / 700))
    text_height = cv2.getTextSize("0.5", cv2.FONT_HERSHEY_SIMPLEX, scale, max(2, int(4 * scale)))[0][1]
    for value in (1.0, 0.5, 0.0):
        y = int(round((1 - value) * (height - 1)))
        canvas[max(0, y - 1):y + 1, :bar.shape[1] + 4] = 0
        baseline = min(height - 4, max(text_height + 4, y + text_height // 2))
        _text(canvas, f"{value:g}", (bar.shape[1] + 6, baseline), scale, (255, 255, 255))
    return canvas


def enlarged(rgb, normalised_map, decision):
    """The three at least MIN_PICTURE_SIDE pixels high (nearest neighbour: the pixels stay visible), else as given."""
    factor = int(np.ceil(MIN_PICTURE_SIDE / rgb.shape[0]))
    if factor <= 1:
        return rgb, normalised_map, decision
    size = (rgb.shape[1] * factor, rgb.shape[0] * factor)
    return tuple(cv2.resize(np.ascontiguousarray(array), size, interpolation=cv2.INTER_NEAREST)
                 for array in (rgb, normalised_map.astype(np.float32), decision.astype(np.uint8)))


def prediction_picture(rgb, normalised_map, decision, score, label, review_score=None):
    """RGB uint8: the image | the heat map drawn over it (normalised: one fixed 0-1 scale for every image, 0.5 at
    the image threshold) with the outline of the predicted regions (``decision``: bool map) and the image's
    normalised score and label written on it (a REVIEW image also the score its band starts at, ``review_score``)
    | the colour bar. An image under MIN_PICTURE_SIDE pixels is enlarged; the caption is fitted to its width."""
    rgb, normalised_map, decision = enlarged(rgb, normalised_map, decision)
    heat = cv2.applyColorMap((np.clip(normalised_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    overlay = np.ascontiguousarray(cv2.addWeighted(rgb, 0.5, heat, 0.5, 0.0))
    height, width = rgb.shape[:2]
    contours, _ = cv2.findContours(decision.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), max(1, height // 224))
    colour = {NG: (255, 64, 64), REVIEW: (255, 176, 0)}.get(label, (64, 255, 64))
    lines = [f"{label}  score {score:.3f}"]
    if label == REVIEW and review_score is not None:   # a second line: a 224-pixel map is narrow
        lines.append(f"review from {review_score:.3f}")
    scale = fitted_scale(lines, width, max(0.4, height / 600))
    step = int(np.ceil(30 * scale)) + 4
    for number, line in enumerate(lines, start=1):
        _text(overlay, line, (8, number * step), scale, colour)
    return np.concatenate([rgb, overlay, colour_bar(height)], axis=1)
