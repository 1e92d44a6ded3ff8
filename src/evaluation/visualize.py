"""Per-image pictures: image | heat-map overlay | ground truth. Callers write into a staged folder."""
import cv2
import numpy as np


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
