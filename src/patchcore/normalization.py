"""Score normalisation to [0, 1] and decision thresholds, fitted on the validation set, stored as JSON.

Normaliser. From held-out normal scores take two robust anchors, ``low`` = the q_low quantile (default
the median) and ``high`` = the q_high quantile (default 0.99), and map a score s through

    t = (s - low) / (high - low),   u = K (t - 1),   n(s) = 0.5 + 0.5 u / (1 + |u|),   K = 9,

so ``low`` -> 0.05, ``high`` -> 0.5, ``high + (high - low)`` -> 0.95, and scores far outside the normal
range approach 0 or 1 without reaching them. Why this map:
- robust: quantiles ignore the few extreme held-out scores that a min-max scale would be set by;
- strictly increasing: rankings are kept, so AUROC, AP and PRO are the same before and after; clipping
  (t clipped to [0, 1]) would tie every anomaly above ``high`` at 1;
- saturating slowly: with the same two anchors a logistic rounds to 1.0 in float32 about seven spreads
  above ``high``, tying strong anomalies; u / (1 + |u|) stays below 1.0 up to about a million spreads;
- interpretable: 0.5 is the upper edge of normal. When synthetic-anomaly scores are given as well,
  ``high`` is instead the max-F1 threshold between the normal and anomalous scores (if it lies above
  ``low``), so 0.5 is the validation set's best decision point.
Degenerate spread (high == low, e.g. all held-out scores equal): the spread falls back to
``max(|low|, 1) * 1e-6``, the map then being a steep step at the normal value; never a division by zero.

Thresholds. ``choose_thresholds`` returns an image and a pixel threshold: the max-F1 threshold on the
validation set when it holds anomalies (placed just above the highest score it does not flag), else a high
quantile of the normal scores. Pixel maps are reduced to two histograms
(normal / defect pixels) of 2**16 bins over the pooled score range, so any number of full-resolution maps
costs O(bins) memory; the pixel threshold is then exact up to one bin width.
"""
from dataclasses import asdict, dataclass

import numpy as np

from src.utils.errors import InputError

NORMALIZER_METHOD = "quantile-rational-sigmoid-v1"
SLOPE = 9.0   # K above: the low anchor maps to 0.5 - 0.5 K / (1 + K) = 0.05
MIN_SAMPLES = 2
PIXEL_BINS = 1 << 16


def _finite_scores(values, name):
    scores = np.asarray(values, np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise InputError(name, "scores contain NaN or infinite values")
    return scores


def _max_f1_threshold(positives, negatives, lower, upper):
    """Max-F1 threshold over candidates sorted ascending: candidate k holds ``positives[k]`` anomalous and
    ``negatives[k]`` normal scores, all within [lower[k], upper[k]]; a score is flagged when >= threshold.

    Returns (threshold, f1). Of tied F1 values the highest candidate wins (fewer false alarms). The
    threshold lies just above the nearest non-empty candidate below the chosen one (the smallest float32 above
    its upper bound, so float32 scores compare the same everywhere), or at the lowest score when there is
    none. Why not midway: every threshold in that gap scores the same on validation, the normal side of the
    gap is measured while synthetic defects are cruder than real ones, and anything higher only loses the
    real defects that score between them.
    """
    occupied = (positives + negatives) > 0
    positives, negatives, lower, upper = positives[occupied], negatives[occupied], lower[occupied], upper[occupied]
    true_pos = np.cumsum(positives[::-1])[::-1]   # flagged anomalous scores if candidate k is the threshold
    flagged = np.cumsum((positives + negatives)[::-1])[::-1]
    f1 = 2 * true_pos / (flagged + true_pos[0])   # = 2 P R / (P + R); true_pos[0] = all anomalous scores
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    if best == 0:
        return float(lower[0]), float(f1[0])
    above = np.nextafter(np.float32(upper[best - 1]), np.float32(np.inf))
    return float(min(above, lower[best])), float(f1[best])


@dataclass(frozen=True)
class ScoreNormalizer:
    """Monotone map of raw scores to [0, 1] (see the module docstring); build it with :meth:`fit` or
    :meth:`at_threshold`."""
    low: float
    high: float
    quantiles: tuple = (0.5, 0.99)
    anchored_by_anomalies: bool = False

    @classmethod
    def fit(cls, normal_scores, quantiles=(0.5, 0.99), anomalous_scores=None):
        """Anchors from held-out normal scores (any shape, pooled), optionally with synthetic-anomaly scores."""
        q_low, q_high = (float(q) for q in quantiles)
        if not 0 <= q_low < q_high <= 1:
            raise InputError("quantiles", f"need 0 <= low < high <= 1, got {quantiles!r}")
        normal = _finite_scores(normal_scores, "normal_scores")
        if normal.size < MIN_SAMPLES:
            raise InputError("normal_scores", f"need at least {MIN_SAMPLES} held-out normal scores to normalise, "
                                              f"got {normal.size}")
        low, high = (float(v) for v in np.quantile(normal, (q_low, q_high)))
        anchored = False
        if anomalous_scores is not None and np.size(anomalous_scores):
            anomalous = _finite_scores(anomalous_scores, "anomalous_scores")
            decision = score_threshold(normal, anomalous)[0]
            if decision > low:
                high, anchored = decision, True
        return cls(low, high, (q_low, q_high), anchored)

    @classmethod
    def at_threshold(cls, normal_scores, threshold):
        """The map that puts ``threshold`` at 0.5 and the median of ``normal_scores`` at 0.05: a decision's score.
        A threshold at or below that median (a model that cannot separate its validation images) keeps the same
        spread, mirrored below the threshold."""
        normal = _finite_scores(normal_scores, "normal_scores")
        if normal.size == 0:
            raise InputError("normal_scores", "no normal scores to anchor the normalised score")
        median, threshold = float(np.median(normal)), float(threshold)
        return cls(median if median < threshold else threshold - (median - threshold), threshold, (0.5, 0.5), True)

    @property
    def spread(self):
        return self.high - self.low if self.high > self.low else max(abs(self.low), 1.0) * 1e-6

    def transform(self, scores):
        """Normalised scores in [0, 1], same shape; float32 in -> float32 out, otherwise float64."""
        scores = np.asarray(scores)
        u = (scores.astype(np.float64) - self.low) * (SLOPE / self.spread) - SLOPE
        normalised = 0.5 + 0.5 * u / (1 + np.abs(u))
        return normalised.astype(np.float32) if scores.dtype == np.float32 else normalised

    def to_dict(self):
        return {"method": NORMALIZER_METHOD, "low": self.low, "high": self.high,
                "quantiles": list(self.quantiles), "anchored_by_anomalies": self.anchored_by_anomalies}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or data.get("method") != NORMALIZER_METHOD:
            raise InputError("normalizer", f"expected a dict with method {NORMALIZER_METHOD!r}, got {data!r}")
        try:
            low, high = float(data["low"]), float(data["high"])
            quantiles = tuple(float(q) for q in data["quantiles"])
            anchored = bool(data["anchored_by_anomalies"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("normalizer", f"malformed normaliser {data!r} ({exc})") from None
        if not (np.isfinite(low) and np.isfinite(high) and high >= low and len(quantiles) == 2):
            raise InputError("normalizer", f"needs finite low <= high and two quantiles, got {data!r}")
        return cls(low, high, quantiles, anchored)


def score_threshold(normal_scores, anomalous_scores=(), normal_quantile=0.99):
    """(threshold, f1 or None, method): max-F1 between the two score sets (exact), or without anomalous
    scores the ``normal_quantile`` of the normal ones."""
    normal = _finite_scores(normal_scores, "normal scores")
    anomalous = _finite_scores(anomalous_scores, "anomalous scores")
    if normal.size == 0:
        raise InputError("normal scores", "no normal validation scores: cannot choose a threshold")
    if anomalous.size == 0:
        return float(np.quantile(normal, normal_quantile)), None, "normal_quantile"
    values, inverse = np.unique(np.concatenate([anomalous, normal]), return_inverse=True)
    positives = np.bincount(inverse[:anomalous.size], minlength=values.size)
    negatives = np.bincount(inverse[anomalous.size:], minlength=values.size)
    return (*_max_f1_threshold(positives, negatives, values, values), "max_f1")


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
        return (*_max_f1_threshold(defect, normal, edges[:-1], edges[1:]), "max_f1")
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

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError("thresholds", f"malformed thresholds {data!r} ({exc})") from None


THRESHOLD_POLICIES = ("f1", "fpr:<rate>", "manual:<value>")


def parse_threshold_policy(policy):
    """("f1", None), ("fpr", rate in (0, 1)) or ("manual", value) from the config string; InputError else."""
    text = str(policy).strip()
    name, _, value = text.partition(":")
    try:
        if name == "f1" and not value:
            return "f1", None
        if name == "fpr" and 0 < float(value) < 1:
            return "fpr", float(value)
        if name == "manual" and np.isfinite(float(value)):
            return "manual", float(value)
    except ValueError:
        pass
    raise InputError("postprocess.threshold", f"must be one of {', '.join(THRESHOLD_POLICIES)}, got {policy!r}")


def choose_thresholds(image_scores_normal, image_scores_anomalous=(), pixel_maps=None, pixel_masks=None,
                      image_quantile=0.99, pixel_quantile=0.999, policy="f1"):
    """Image and pixel thresholds from validation results (see the module docstring).

    ``policy`` sets the image threshold: ``f1`` the max-F1 threshold (the ``image_quantile`` of the normal scores
    when there are no anomalous ones), ``fpr:<rate>`` the (1 - rate) quantile of the normal scores (a target
    false-alarm rate), ``manual:<value>`` the value itself. ``pixel_maps``/``pixel_masks``: per-image [H, W]
    maps and 0/1 masks (sizes may differ between images); without them the pixel threshold is None.
    """
    name, value = parse_threshold_policy(policy)
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
    return Thresholds(image, pixel, image_method, pixel_method, image_f1, pixel_f1)
