"""Score normalisation to [0, 1], fitted on the validation set, stored as JSON, and the max-F1 separation of two
score sets (``score_threshold``) that anchors it; ``src/decisions/thresholds.py`` chooses the model's thresholds
with it and is where scores meet them.

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

Edge rings. A tile's feature grid is not uniform: the cells next to its edge see the network's zero padding,
and on the 2048² demo their scores run higher (the ring one cell in: 99th percentile 0.18 against 0.08 inside,
and 59 of 80 good tiles' maxima), so tile edges, not defects, set the top of a good image's map. ``EdgeRings``
maps each ring of cells at distance d from the grid's edge (d < ``EDGE_DEPTH``; the rest is the interior)
affinely so that its normal median and 99th percentile land on the interior's. A task's normaliser
(``ScoreNormalizer.fit_grids``) fits the rings on its normal validation cells and the map above on the raw
cells; ``transform_grids`` equalises, then maps.
"""
from dataclasses import dataclass

import numpy as np

from src.utils.errors import InputError

NORMALIZER_METHOD = "quantile-rational-sigmoid-v1"
SLOPE = 9.0   # K above: the low anchor maps to 0.5 - 0.5 K / (1 + K) = 0.05
MIN_SAMPLES = 2
# Rings of cells equalised at a grid's edge: on the 2048² demo (MobileNetV2 taps at strides 8 and 16, merge 3)
# the rings' scores settle to the interior's about 6 cells in.
EDGE_DEPTH = 6


def finite_scores(values, name):
    scores = np.asarray(values, np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise InputError(name, "scores contain NaN or infinite values")
    return scores


def max_f1_threshold(positives, negatives, lower, upper):
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


def edge_distance(shape, depth):
    """[h, w] int: each cell's distance from the nearest edge of an h x w grid, capped at ``depth`` (and at the
    grid's own centre): ring d < depth, or the interior."""
    height, width = shape
    rows, cols = np.arange(height), np.arange(width)
    distance = np.minimum.outer(np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols))
    return np.minimum(distance, min(depth, (min(height, width) - 1) // 2))


@dataclass(frozen=True)
class EdgeRings:
    """Per-ring anchors (normal median, 99th percentile) at a grid's edge, the last entry the interior's; see the
    module docstring."""
    low: tuple
    high: tuple

    @classmethod
    def fit(cls, grids, normal_cells, depth=EDGE_DEPTH):
        """Anchors from [N, h, w] raw ``grids`` at their ``normal_cells`` (bool, same shape). A ring with fewer
        than MIN_SAMPLES normal cells or no spread keeps the interior's anchors (it is left as it is)."""
        grids = np.asarray(grids)
        distance = np.broadcast_to(edge_distance(grids.shape[-2:], depth), grids.shape)
        inner = int(distance.max())
        anchors = []
        for ring in range(inner + 1):
            cells = grids[(distance == ring) & normal_cells]
            anchors.append(tuple(float(v) for v in np.quantile(cells, (0.5, 0.99)))
                           if cells.size >= MIN_SAMPLES else None)
        if anchors[-1] is None or anchors[-1][1] <= anchors[-1][0]:
            raise InputError("normal_scores", f"the grid interior has too few normal cells or no spread to equalise "
                                              f"its edge to: {anchors[-1]}")
        anchors = [a if a is not None and a[1] > a[0] else anchors[-1] for a in anchors]
        return cls(tuple(a[0] for a in anchors), tuple(a[1] for a in anchors))

    def apply(self, grids):
        """[..., h, w] grids with every ring mapped onto the interior; float32 in -> float32 out."""
        grids = np.asarray(grids)
        distance = edge_distance(grids.shape[-2:], len(self.low) - 1)
        low, high = np.asarray(self.low)[distance], np.asarray(self.high)[distance]
        equalised = self.low[-1] + (grids - low) * ((self.high[-1] - self.low[-1]) / (high - low))
        return equalised.astype(grids.dtype) if grids.dtype == np.float32 else equalised

    def to_dict(self):
        return {"depth": len(self.low) - 1, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data):
        try:
            low, high = tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("normalizer", f"malformed edge rings {data!r} ({exc})") from None
        if not low or len(low) != len(high) or not all(h > l for l, h in zip(low, high)):
            raise InputError("normalizer", f"edge rings need as many low as high anchors, each high > low: {data!r}")
        return cls(low, high)


@dataclass(frozen=True)
class ScoreNormalizer:
    """Monotone map of raw scores to [0, 1] (see the module docstring); build it with :meth:`fit` or
    :meth:`at_threshold`."""
    low: float
    high: float
    quantiles: tuple = (0.5, 0.99)
    anchored_by_anomalies: bool = False
    edge_rings: EdgeRings = None   # grids only (transform_grids); None: cells are taken as they are

    @classmethod
    def fit(cls, normal_scores, quantiles=(0.5, 0.99), anomalous_scores=None):
        """Anchors from held-out normal scores (any shape, pooled), optionally with synthetic-anomaly scores."""
        q_low, q_high = (float(q) for q in quantiles)
        if not 0 <= q_low < q_high <= 1:
            raise InputError("quantiles", f"need 0 <= low < high <= 1, got {quantiles!r}")
        normal = finite_scores(normal_scores, "normal_scores")
        if normal.size < MIN_SAMPLES:
            raise InputError("normal_scores", f"need at least {MIN_SAMPLES} held-out normal scores to normalise, "
                                              f"got {normal.size}")
        low, high = (float(v) for v in np.quantile(normal, (q_low, q_high)))
        anchored = False
        if anomalous_scores is not None and np.size(anomalous_scores):
            anomalous = finite_scores(anomalous_scores, "anomalous_scores")
            decision = score_threshold(normal, anomalous)[0]
            if decision > low:
                high, anchored = decision, True
        return cls(low, high, (q_low, q_high), anchored)

    @classmethod
    def fit_grids(cls, grids, anomalous_cells, edge_depth=EDGE_DEPTH):
        """A task's normaliser from its [N, h, w] raw validation ``grids``: edge rings fitted on the normal cells
        (not when ``edge_depth`` is 0) and the scale (``fit``, ``anomalous_cells`` as anomalies) on the raw cells.
        Why the scale on the raw cells: refitted on the equalised ones, its max-F1 anchor fell (on the 2048² demo
        from 44.0 to 41.2) and one good image's interior spot rose from 0.39 to 0.66,
        above four of its five defects' margins; measured, not derived."""
        grids, anomalous = np.asarray(grids), np.asarray(anomalous_cells, bool)
        rings = EdgeRings.fit(grids, ~anomalous, edge_depth) if edge_depth else None
        fitted = cls.fit(grids[~anomalous], anomalous_scores=grids[anomalous])
        return cls(fitted.low, fitted.high, fitted.quantiles, fitted.anchored_by_anomalies, rings)

    @classmethod
    def at_threshold(cls, normal_scores, threshold):
        """The map that puts ``threshold`` at 0.5 and the median of ``normal_scores`` at 0.05: a decision's score.
        A threshold at or below that median (a model that cannot separate its validation images) keeps the same
        spread, mirrored below the threshold."""
        normal = finite_scores(normal_scores, "normal_scores")
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

    def transform_grids(self, grids):
        """``transform`` of [..., h, w] score grids, their edge rings equalised first."""
        return self.transform(grids if self.edge_rings is None else self.edge_rings.apply(grids))

    def to_dict(self):
        return {"method": NORMALIZER_METHOD, "low": self.low, "high": self.high,
                "quantiles": list(self.quantiles), "anchored_by_anomalies": self.anchored_by_anomalies,
                "edge_rings": None if self.edge_rings is None else self.edge_rings.to_dict()}

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
        rings = data.get("edge_rings")   # absent in normalisers written before edge rings
        return cls(low, high, quantiles, anchored, None if rings is None else EdgeRings.from_dict(rings))


def score_threshold(normal_scores, anomalous_scores=(), normal_quantile=0.99):
    """(threshold, f1 or None, method): max-F1 between the two score sets (exact), or without anomalous
    scores the ``normal_quantile`` of the normal ones."""
    normal = finite_scores(normal_scores, "normal scores")
    anomalous = finite_scores(anomalous_scores, "anomalous scores")
    if normal.size == 0:
        raise InputError("normal scores", "no normal validation scores: cannot choose a threshold")
    if anomalous.size == 0:
        return float(np.quantile(normal, normal_quantile)), None, "normal_quantile"
    values, inverse = np.unique(np.concatenate([anomalous, normal]), return_inverse=True)
    positives = np.bincount(inverse[:anomalous.size], minlength=values.size)
    negatives = np.bincount(inverse[anomalous.size:], minlength=values.size)
    return (*max_f1_threshold(positives, negatives, values, values), "max_f1")
