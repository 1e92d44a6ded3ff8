"""Maps -> decisions: one image's OK/NG at the model's image threshold and where its defect is.

``DecisionRule`` holds a model's thresholds and score normaliser (from ``model.json``, or ``export.json`` on the
C++ path) and turns one image's raw score and [H, W] raw map into a ``Decision``: the OK/NG label, the score
normalised to [0, 1] with the image threshold at 0.5, the pixel decision (map >= pixel threshold) and its regions
(8-connected components: bounding box [x, y, w, h] and area in the original image's pixels, highest normalised
pixel score, ``source`` "pixel_threshold"). An NG image always has a region: when no pixel reaches the pixel
threshold, the region is where its score came from, the map's peak outlined at half its height above the map's
median (``source`` "score_peak"), so a user told "defective" is shown where. predict.py, the service and
postprocess.py all decide through it.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from src.patchcore.normalization import ScoreNormalizer
from src.utils.errors import InputError


@dataclass(frozen=True, eq=False)
class Decision:
    label: str                   # "OK" or "NG"
    raw_score: float
    image_score: float           # normalised: 0.5 at the image threshold
    regions: list                # dicts, highest max_score first
    mask: np.ndarray             # [H, W] bool: the outlined pixels
    normalised_map: np.ndarray   # [H, W], the image score's scale


class DecisionRule:
    """A model's image and pixel thresholds (raw scores; pixel may be None) and its score normaliser."""

    def __init__(self, thresholds, normalizer, where="model.json"):
        if not thresholds or not normalizer:
            raise InputError(where, "the model has no thresholds (it was trained with val_config: null): "
                                    "retrain it with a val_config")
        self.image_threshold = float(thresholds["image"])
        self.pixel_threshold = None if thresholds.get("pixel") is None else float(thresholds["pixel"])
        self.normalizer = ScoreNormalizer.from_dict(normalizer)

    def __call__(self, raw_score, amap, view=None, original_size=None):
        """The Decision for one image: ``amap`` in the view's pixels, boxes mapped back through ``view`` to the
        original image of ``original_size`` (w, h; default the map's size)."""
        original_size = original_size or (amap.shape[1], amap.shape[0])
        label = "NG" if raw_score >= self.image_threshold else "OK"
        mask = amap >= self.pixel_threshold if self.pixel_threshold is not None else np.zeros(amap.shape, bool)
        source = "pixel_threshold"
        if label == "NG" and not mask.any():
            mask, source = score_peak(amap), "score_peak"
        normalised = self.normalizer.transform(amap)
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        sx, sy = original_size[0] / amap.shape[1], original_size[1] / amap.shape[0]
        regions = []
        for component in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[component])
            box = view.to_original([x, y, w, h], original_size) if view is not None else [x, y, w, h]
            regions.append({"bbox": box, "area": int(round(area * sx * sy)),
                            "max_score": float(normalised[components == component].max()), "source": source})
        regions.sort(key=lambda region: -region["max_score"])
        return Decision(label, float(raw_score), float(self.normalizer.transform(np.float64(raw_score))), regions,
                        mask, normalised)


def score_peak(amap):
    """[H, W] bool: the connected part (8-connected) of ``amap`` >= half-way between its median and its maximum
    that holds the maximum: where the image's score came from, outlined at half height above the background."""
    level = float(np.median(amap)) + 0.5 * (float(amap.max()) - float(np.median(amap)))
    _, labels = cv2.connectedComponents((amap >= level).astype(np.uint8), connectivity=8)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return labels == labels[peak]
