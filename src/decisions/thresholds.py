"""Decisions in one place: the thresholds a model is given at training, and the labels they give its scores.

Choosing. ``choose_thresholds`` returns an image (NG) threshold, an optional lower review threshold and a pixel
threshold. The NG threshold is the max-F1 threshold on the validation set when it holds anomalies (placed just
above the highest score it does not flag; the search is ``src/patchcore/normalization.py``'s, which anchors the
normaliser with it), else a high quantile of the normal scores; ``postprocess.threshold`` may instead ask for a
target false-alarm rate or a value. ``postprocess.review`` sets the review threshold (``ThresholdPolicy``): off,
the score that keeps a target share of the validation anomalies at or above it (``recall:<share>``), a target
false-alarm rate or a value; it is never above the NG threshold.
Pixel maps are reduced to two histograms (normal / defect pixels) of 2**16 bins over the pooled score range, so any
number of full-resolution maps costs O(bins) memory; the pixel threshold is then exact up to one bin width.

Applying. A score is anomalous when it is >= its threshold (``flagged``); every comparison of a score or a map with
a threshold goes through this module (an ast test in tests/unit/test_architecture.py holds to it).
Three labels: NG at or above the image threshold, REVIEW at or above the review threshold (the band sent to a
person), OK below; a model without a review threshold only says OK or NG.
``DecisionRule`` holds a model's thresholds and score normaliser (from ``model.json``, or ``export.json`` on the
C++ path) and turns one image's raw score and [H, W] raw map into a ``Decision``: the label, the score
normalised to [0, 1] with the image threshold at 0.5, the pixel decision (map >= pixel threshold) and its regions
(8-connected components: bounding box [x, y, w, h] and area in the original image's pixels, highest normalised
pixel score, ``source`` "pixel_threshold"). An NG image always has a region: when no pixel reaches the pixel
threshold, the region is where its score came from, the map's peak outlined at half its height above the map's
median (``source`` "score_peak"), so a user told "defective" is shown where. predict.py, the service, eval.py's
metrics and postprocess.py all decide through it.
"""
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from src.patchcore.normalization import ScoreNormalizer, finite_scores, max_f1_threshold, score_threshold
from src.utils.errors import InputError

PIXEL_BINS = 1 << 16


def flagged(scores, threshold):
    """Scores (a number or an array: image scores, a map) that are anomalous at ``threshold``: score >= threshold."""
    return np.asarray(scores) >= threshold


OK, REVIEW, NG = "OK", "REVIEW", "NG"   # an image's labels
LABELS = (OK, REVIEW, NG)


def label(raw_score, threshold, review=None):
    """NG when the image's raw score is anomalous at ``threshold``; REVIEW when it is at ``review`` (the lower
    threshold; None: no band); else OK."""
    if flagged(raw_score, threshold):
        return NG
    return REVIEW if review is not None and flagged(raw_score, review) else OK


def decide(scores, threshold, review=None):
    """[N] array of the labels of ``scores`` (see :func:`label`)."""
    return np.array([label(score, threshold, review) for score in np.asarray(scores, np.float64).ravel()], object)


def _pixel_histograms(pixel_maps, pixel_masks):
    """Bin edges and per-bin counts of defect and normal pixels, pooled over all maps (two passes)."""
    pairs = list(zip(pixel_maps, pixel_masks, strict=True))
    for amap, mask in pairs:
        if np.shape(amap) != np.shape(mask):
            raise InputError("pixel_maps", f"map of shape {np.shape(amap)} and mask of shape {np.shape(mask)} differ")
        if not np.all(np.isfinite(amap)):
            raise InputError("pixel_maps", "anomaly maps contain NaN or infinite values")
    low = min(float(np.min(amap)) for amap, _ in pairs)
    high = max(float(np.max(amap)) for amap, _ in pairs)
    edges = np.linspace(low, high if high > low else low + 1.0, PIXEL_BINS + 1)
    defect, normal = np.zeros(PIXEL_BINS, np.int64), np.zeros(PIXEL_BINS, np.int64)
    for amap, mask in pairs:
        amap, is_defect = np.asarray(amap), np.asarray(mask) > 0
        defect += np.histogram(amap[is_defect], edges)[0]
        normal += np.histogram(amap[~is_defect], edges)[0]
    return edges, defect, normal


def pixel_threshold(pixel_maps, pixel_masks, normal_quantile=0.999):
    """(threshold, f1 or None, method) for pixels: max-F1 over the pooled maps when some mask pixel is a
    defect, else the ``normal_quantile`` of the normal pixels (the upper edge of the bin holding it)."""
    edges, defect, normal = _pixel_histograms(pixel_maps, pixel_masks)
    if defect.sum() and normal.sum():
        return (*max_f1_threshold(defect, normal, edges[:-1], edges[1:]), "max_f1")
    if not normal.sum():
        raise InputError("pixel_masks", "every validation pixel is a defect: no normal pixels to set a threshold")
    cumulative = np.cumsum(normal)
    bin_index = int(np.searchsorted(cumulative, normal_quantile * cumulative[-1]))
    return float(edges[bin_index + 1]), None, "normal_quantile"


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds to persist: a score >= threshold is anomalous."""
    image: float
    pixel: float | None
    image_method: str
    pixel_method: str | None
    image_f1: float | None = None
    pixel_f1: float | None = None
    review: float | None = None          # lower image threshold: [review, image) is REVIEW; None: no band
    review_method: str | None = None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError("thresholds", f"malformed thresholds {data!r} ({exc})") from None


THRESHOLD_POLICIES = ("f1", "fpr:<rate>", "manual:<value>")
REVIEW_POLICIES = ("off", "recall:<share>", "fpr:<rate>", "manual:<value>")


def _parse_policy(policy, setting, choices):
    """(name, value or None) of a policy string among ``choices`` (``THRESHOLD_POLICIES`` or ``REVIEW_POLICIES``)."""
    text = str(policy).strip()
    name, _, value = text.partition(":")
    if name in [choice.partition(":")[0] for choice in choices]:
        try:
            if name in ("f1", "off"):
                if not value:
                    return name, None
            elif name == "recall" and 0 < float(value) <= 1 or name == "fpr" and 0 < float(value) < 1 \
                    or name == "manual" and np.isfinite(float(value)):
                return name, float(value)
        except ValueError:
            pass
    raise InputError(setting, f"must be one of {', '.join(choices)}, got {policy!r}")


def parse_threshold_policy(policy):
    """("f1", None), ("fpr", rate in (0, 1)) or ("manual", value) from the config string; InputError else."""
    return _parse_policy(policy, "postprocess.threshold", THRESHOLD_POLICIES)


@dataclass(frozen=True)
class ThresholdPolicy:
    """How training sets a model's image thresholds: ``ng`` (``postprocess.threshold``, ``THRESHOLD_POLICIES``)
    and ``review`` (``postprocess.review``, ``REVIEW_POLICIES``; "off": OK/NG only)."""
    ng: str = "f1"
    review: str = "off"

    def __post_init__(self):
        parse_threshold_policy(self.ng)
        _parse_policy(self.review, "postprocess.review", REVIEW_POLICIES)

    @classmethod
    def from_postprocess(cls, postprocess):
        """The policy of a config's ``postprocess`` section (defaults for the entries it leaves out)."""
        review = postprocess.get("review", cls.review)
        # YAML reads a bare off as false
        return cls(str(postprocess.get("threshold", cls.ng)), "off" if review in (False, None) else str(review))


def review_threshold(policy, image_scores_normal, image_scores_anomalous, ng_threshold):
    """(threshold or None, method or None) of the review ``policy`` (``REVIEW_POLICIES``), at most ``ng_threshold``:
    ``recall:<share>`` the highest score that keeps at least that share of the anomalous scores at or above it."""
    name, value = _parse_policy(policy, "postprocess.review", REVIEW_POLICIES)
    if name == "off":
        return None, None
    if name == "recall":
        anomalous = np.sort(finite_scores(image_scores_anomalous, "image_scores_anomalous"))[::-1]
        if not len(anomalous):
            raise InputError("postprocess.review", f"{policy} needs anomalous validation images (val_config)")
        threshold = float(anomalous[math.ceil(value * len(anomalous) - 1e-9) - 1])
    elif name == "fpr":
        threshold = score_threshold(image_scores_normal, (), 1 - value)[0]
    else:
        threshold = value
    return min(threshold, float(ng_threshold)), f"{name}:{value:g}"


def choose_thresholds(image_scores_normal, image_scores_anomalous=(), pixel_maps=None, pixel_masks=None,
                      image_quantile=0.99, pixel_quantile=0.999, policy=ThresholdPolicy()):
    """Image, review and pixel thresholds from validation results (see the module docstring).

    ``policy`` (a ThresholdPolicy, or the NG policy string alone) sets the image threshold: ``f1`` the max-F1
    threshold (the ``image_quantile`` of the normal scores when there are no anomalous ones), ``fpr:<rate>`` the
    (1 - rate) quantile of the normal scores (a target false-alarm rate), ``manual:<value>`` the value itself; and
    the review threshold (:func:`review_threshold`). ``pixel_maps``/``pixel_masks``: per-image [H, W] maps and
    0/1 masks (sizes may differ between images); without them the pixel threshold is None.
    """
    policy = policy if isinstance(policy, ThresholdPolicy) else ThresholdPolicy(policy)
    name, value = parse_threshold_policy(policy.ng)
    if name == "fpr":
        image, image_f1, image_method = score_threshold(image_scores_normal, (), 1 - value)[0], None, f"fpr:{value:g}"
    elif name == "manual":
        image, image_f1, image_method = value, None, f"manual:{value:g}"
    else:
        image, image_f1, image_method = score_threshold(image_scores_normal, image_scores_anomalous, image_quantile)
    pixel = pixel_f1 = pixel_method = None
    if pixel_maps is not None and len(pixel_maps):
        if pixel_masks is None:
            raise InputError("pixel_masks", "pixel maps given without their masks")
        pixel, pixel_f1, pixel_method = pixel_threshold(pixel_maps, pixel_masks, pixel_quantile)
    review, review_method = review_threshold(policy.review, image_scores_normal, image_scores_anomalous, image)
    return Thresholds(image, pixel, image_method, pixel_method, image_f1, pixel_f1, review, review_method)


@dataclass(frozen=True, eq=False)
class Decision:
    label: str                   # "OK", "REVIEW" or "NG"
    raw_score: float
    image_score: float           # normalised: 0.5 at the image threshold
    regions: list                # dicts, highest max_score first
    mask: np.ndarray             # [H, W] bool: the outlined pixels
    normalised_map: np.ndarray   # [H, W], the image score's scale


class DecisionRule:
    """A model's image, review and pixel thresholds (raw scores; review and pixel may be None) and its score
    normaliser."""

    def __init__(self, thresholds, normalizer, where="model.json"):
        if not thresholds or not normalizer:
            raise InputError(where, "the model has no thresholds (it was trained with val_config: null): "
                                    "retrain it with a val_config")
        self.image_threshold = float(thresholds["image"])
        self.pixel_threshold = None if thresholds.get("pixel") is None else float(thresholds["pixel"])
        self.review_threshold = None if thresholds.get("review") is None else float(thresholds["review"])
        self.normalizer = ScoreNormalizer.from_dict(normalizer)

    @property
    def review_image_score(self):
        """The normalised image score from which an image is REVIEW (the image threshold's is 0.5), or None."""
        return None if self.review_threshold is None else float(self.normalizer.transform(
            np.float64(self.review_threshold)))

    def describe(self):
        """'image threshold <t>[, review threshold <r>]' (raw scores)."""
        review = "" if self.review_threshold is None else f", review threshold {self.review_threshold:.6g}"
        return f"image threshold {self.image_threshold:.6g}{review}"

    def count(self, decided):
        """'7 OK, 2 REVIEW, 1 NG' of a list of labels (REVIEW left out for a model without a review band)."""
        return ", ".join(f"{sum(value == name for value in decided)} {name}" for name in LABELS
                         if name != REVIEW or self.review_threshold is not None)

    def __call__(self, raw_score, amap, view=None, original_size=None):
        """The Decision for one image: ``amap`` in the view's pixels, boxes mapped back through ``view`` to the
        original image of ``original_size`` (w, h; default the map's size)."""
        original_size = original_size or (amap.shape[1], amap.shape[0])
        decided = label(raw_score, self.image_threshold, self.review_threshold)
        mask = flagged(amap, self.pixel_threshold) if self.pixel_threshold is not None else np.zeros(amap.shape, bool)
        source = "pixel_threshold"
        if decided != OK and not mask.any():
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
        return Decision(decided, float(raw_score), float(self.normalizer.transform(np.float64(raw_score))), regions,
                        mask, normalised)


def score_peak(amap):
    """[H, W] bool: the connected part (8-connected) of ``amap`` >= half-way between its median and its maximum
    that holds the maximum: where the image's score came from, outlined at half height above the background."""
    level = float(np.median(amap)) + 0.5 * (float(amap.max()) - float(np.median(amap)))
    _, labels = cv2.connectedComponents((amap >= level).astype(np.uint8), connectivity=8)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return labels == labels[peak]
