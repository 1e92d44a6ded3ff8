"""Anomaly-detection metrics on numpy arrays, and the markdown results table.

Image level: AUROC of image scores. Pixel level (all test pixels pooled): AUROC, average precision, the best
F1 over the thresholds of the precision-recall curve, and PRO: the per-region-overlap curve against the false
positive rate on normal pixels, integrated up to ``max_fpr`` (0.3) and divided by it.

A metric that is undefined for the data (a single class present, no ground-truth region, no normal pixel) is
``None``, never a made-up number.

Operating points (``operating_points``), for choosing a model by what a line would run it at (anomalib's PGn and
PBn): ``tnr_at_fnr_n``, the share of good images passed when at most n% of defective images may escape, and
``tpr_at_fpr_n``, the share of defective images caught when at most n% of good images may be rejected; ties
count against the model. A 1% or 5% rate needs enough images of the class it limits: with fewer than
``MIN_IMAGES_PER_RATE`` the value is None and ``image_counts`` says why. Per defect type, the margin of its
lowest image score over the highest good image score (> 0: every image of the type is above every good one).

PRO regions are the 8-connected components of each image's mask (like the MVTec AD evaluation code): two
defect pixels touching only at a corner are one region. The curve is computed exactly, without a loop over
thresholds: the mean overlap over R regions at threshold t is ``sum_r |{p in r: s_p >= t}| / (|r| R)``,
which is the true positive rate of a ROC curve in which each defect pixel weighs ``1 / |region|``. So the
cumulative sums over one descending sort of the pooled scores give every point of the PRO curve, and the
same sort gives the pixel ROC and precision-recall curves (``PixelCurves``).
"""
import cv2
import numpy as np
from sklearn.metrics import auc, roc_auc_score

from src.decisions.thresholds import NG, OK, REVIEW, decide, flagged

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1", "pro")


def _both_classes(labels):
    return bool(np.any(labels)) and not bool(np.all(labels))


def image_auroc(scores, labels):
    """AUROC of image scores against 0/1 labels; None when only one class is present."""
    labels = np.asarray(labels).ravel() > 0
    if not _both_classes(labels):
        return None
    return float(roc_auc_score(labels, np.asarray(scores, np.float64).ravel()))


def _pooled(maps, masks):
    """Per-image maps and masks (arrays [N, H, W] or lists of [H, W], sizes may differ) -> flat scores, labels."""
    pairs = list(zip(maps, masks, strict=True))
    for amap, mask in pairs:
        if np.shape(amap) != np.shape(mask):
            raise ValueError(f"anomaly map of shape {np.shape(amap)} and mask of shape {np.shape(mask)} differ")
    scores = np.concatenate([np.asarray(amap).ravel() for amap, _ in pairs])
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("anomaly maps contain NaN or infinite values")
    labels = np.concatenate([np.asarray(mask).ravel() > 0 for _, mask in pairs])
    return scores, labels


def _region_pixel_weights(masks):
    """Per pixel (pooled like ``_pooled``): 1 / size of its 8-connected GT region, 0 outside regions."""
    weights, n_regions = [], 0
    for mask in masks:
        binary = (np.asarray(mask) > 0).astype(np.uint8)
        count, labels = cv2.connectedComponents(binary, connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        inverse = np.zeros(count, np.float64)
        inverse[1:] = 1.0 / sizes[1:]
        weights.append(inverse[labels.ravel()])
        n_regions += count - 1
    return np.concatenate(weights), n_regions


class PixelCurves:
    """Every pixel metric from one descending sort of the pooled scores.

    For each distinct score t (highest first) it keeps the number of defect pixels and of normal pixels
    scoring >= t, and the summed region weights of the defect pixels (see the module docstring), i.e. the
    cumulative counts that scikit-learn's ``roc_curve`` / ``precision_recall_curve`` build; the tests check
    every metric against scikit-learn. Sharing the sort makes the four metrics cost about one sort.
    """

    def __init__(self, maps, masks, num_thresholds=None):
        maps, masks = list(maps), list(masks)
        scores, labels = _pooled(maps, masks)
        weights, self.n_regions = _region_pixel_weights(masks)
        if num_thresholds is not None:
            # Round every score down to the nearest of the evenly spaced thresholds: scores >= t_k are
            # then exactly the same pixels as before for every t_k, and no other threshold exists.
            thresholds = np.linspace(scores.min(), scores.max(), int(num_thresholds))
            scores = thresholds[np.searchsorted(thresholds, scores, side="right") - 1]
        order = np.argsort(scores)[::-1]
        sorted_scores = scores[order]
        # Last index of each run of equal scores: a threshold counts all tied pixels at once.
        ends = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1)
        self.true_positives = np.cumsum(labels[order], dtype=np.int64)[ends]
        self.false_positives = ends + 1 - self.true_positives
        self.region_overlap_sum = np.cumsum(weights[order])[ends]
        self.n_defect = int(self.true_positives[-1]) if len(ends) else 0
        self.n_normal = len(scores) - self.n_defect

    def _defined(self):
        return self.n_defect > 0 and self.n_normal > 0

    def _fpr(self):
        return np.append(0.0, self.false_positives / self.n_normal)

    def auroc(self):
        if not self._defined():
            return None
        return float(auc(self._fpr(), np.append(0.0, self.true_positives / self.n_defect)))

    def _precision_recall(self):
        return self.true_positives / (self.true_positives + self.false_positives), self.true_positives / self.n_defect

    def average_precision(self):
        """scikit-learn's definition: sum over thresholds of (recall step) x precision, no interpolation."""
        if not self._defined():
            return None
        precision, recall = self._precision_recall()
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))

    def best_f1(self):
        if not self._defined():
            return None
        precision, recall = self._precision_recall()
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
        return float(f1.max())

    def pro(self, max_fpr=0.3):
        """Area under mean region overlap vs FPR for FPR in [0, max_fpr], divided by max_fpr."""
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
        if self.n_regions == 0 or self.n_normal == 0:
            return None
        # The total weight is n_regions; dividing by the summed float weights instead makes full coverage
        # exactly 1.0 (a perfect map scores 1.0, not 1 - 1e-16).
        fpr, overlap = self._fpr(), np.append(0.0, self.region_overlap_sum / self.region_overlap_sum[-1])
        # fpr is non-decreasing: keep the points up to max_fpr, close the curve by interpolating at max_fpr.
        end = int(np.searchsorted(fpr, max_fpr, side="right"))
        if end < len(fpr):
            step = (max_fpr - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
            closing = overlap[end - 1] + step * (overlap[end] - overlap[end - 1])
        else:
            closing = overlap[-1]
        return float(auc(np.append(fpr[:end], max_fpr), np.append(overlap[:end], closing)) / max_fpr)


def pixel_auroc(maps, masks):
    return PixelCurves(maps, masks).auroc()


def pixel_ap(maps, masks):
    return PixelCurves(maps, masks).average_precision()


def pixel_f1(maps, masks):
    """The maximum F1 over the thresholds of the pixel precision-recall curve."""
    return PixelCurves(maps, masks).best_f1()


def pro_score(maps, masks, max_fpr=0.3, num_thresholds=None):
    """Normalised area under the PRO curve for FPR in [0, max_fpr]; None without regions or normal pixels.

    ``num_thresholds=None`` uses every distinct score as a threshold (exact). An integer restricts the curve
    to that many evenly spaced thresholds between the lowest and highest score (the convention of some
    published evaluation scripts).
    """
    return PixelCurves(maps, masks, num_thresholds).pro(max_fpr)


def _pixel_metrics(maps, masks):
    curves = PixelCurves(maps, masks)
    return dict(pixel_auroc=curves.auroc(), pixel_ap=curves.average_precision(), pixel_f1=curves.best_f1(),
                pro=curves.pro())


def _resized(array, size, interpolation):
    return cv2.resize(np.asarray(array, np.float32), (size, size), interpolation=interpolation)


def resize_for_evaluation(amap, mask, size):
    """Map and mask -> ``size`` x ``size``. Shrinking: the map is area-averaged and the mask max-pooled
    (an output pixel is a defect if any source pixel under it is), so a 1-pixel defect survives.
    INTER_AREA on a float mask gives the covered defect fraction, and that fraction is > 0 exactly when
    some defect pixel overlaps the output cell. Enlarging: bilinear map, nearest-neighbour mask."""
    height, width = np.shape(mask)
    shrink = size <= min(height, width)
    amap = _resized(amap, size, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = _resized(np.asarray(mask) > 0, size, cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    return amap, (mask > 0).astype(np.uint8)


def compute_imagewise_metrics(prediction_scores, gt_labels, prediction_masks=None, gt_masks=None, **kwargs):
    """HiAD-style evaluator: ``{"image_auroc": ...}`` (maps and masks are accepted and ignored)."""
    return {"image_auroc": image_auroc(prediction_scores, gt_labels)}


def compute_pixelwise_metrics(prediction_scores, gt_labels, prediction_masks, gt_masks, resize=None, **kwargs):
    """HiAD-style evaluator: pixel_auroc, pixel_ap, pixel_f1, pro of anomaly maps ``prediction_masks``
    against ``gt_masks`` (lists or arrays; per-image sizes may differ). ``resize=R`` first brings every
    pair to R x R with ``resize_for_evaluation``."""
    maps, masks = list(prediction_masks), list(gt_masks)
    if resize:
        pairs = [resize_for_evaluation(amap, mask, int(resize)) for amap, mask in zip(maps, masks, strict=True)]
        maps, masks = [amap for amap, _ in pairs], [mask for _, mask in pairs]
    return _pixel_metrics(maps, masks)


def mean_row(rows, columns):
    """A row named ``mean`` holding, per metric column, the mean of the rows' defined (non-None) values."""
    row = {"clsname": "mean"}
    for column in columns:
        if column == "clsname":
            continue
        values = [r[column] for r in rows if r.get(column) is not None]
        row[column] = float(np.mean(values)) if values else None
    return row


def _cell(value):
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def format_table(rows, columns):
    """Markdown table with centred columns; numbers as ``%g``, None as ``n/a``.

    A column is as wide as its widest value but at least two characters wider than its header, and every
    cell has a space on either side (the layout of ``tabulate``'s pipe format).
    """
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column) + 2] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def centred(entry, width):
        left = (width - len(entry)) // 2   # an odd spare space goes to the right
        return " " * left + entry + " " * (width - len(entry) - left)

    def line(entries):
        return "|" + "|".join(f" {centred(entry, width)} " for entry, width in zip(entries, widths)) + "|"

    separator = "|" + "|".join(":" + "-" * width + ":" for width in widths) + "|"
    return "\n".join([line(columns), separator] + [line(entries) for entries in cells])


OPERATING_RATES = (1, 5)   # percent
OPERATING_KEYS = tuple(f"tnr_at_fnr_{n}" for n in OPERATING_RATES) + tuple(f"tpr_at_fpr_{n}" for n in OPERATING_RATES)
MIN_IMAGES_PER_RATE = 20


def tnr_at_fnr(good_scores, defect_scores, percent):
    """Share of good images below the highest threshold that lets at most ``percent``% of the defective images
    escape (an image is NG when its score >= the threshold, so a good image tied with it is rejected)."""
    misses = int(np.floor(len(defect_scores) * percent / 100 + 1e-9))
    threshold = np.sort(defect_scores)[misses]
    return float(np.mean(~flagged(good_scores, threshold)))


def tpr_at_fpr(good_scores, defect_scores, percent):
    """Share of defective images strictly above the good score that at most ``percent``% of the good images
    exceed (a defective image tied with it is counted as missed)."""
    false_alarms = int(np.floor(len(good_scores) * percent / 100 + 1e-9))
    threshold = np.sort(good_scores)[::-1][false_alarms]
    return float(np.mean(flagged(defect_scores, np.nextafter(threshold, np.inf))))   # strictly above


def operating_points(prediction_scores, gt_labels, prediction_masks=None, gt_masks=None, defect_types=None,
                     **kwargs):
    """HiAD-style evaluator: ``OPERATING_KEYS`` (None with fewer than ``MIN_IMAGES_PER_RATE`` images of the class
    the rate limits, or without both classes), ``image_counts`` and, with ``defect_types`` (one name per image),
    ``margin_per_defect_type`` and its smallest value, ``worst_margin``. See the module docstring."""
    scores, labels = np.asarray(prediction_scores, np.float64).ravel(), np.asarray(gt_labels).ravel() > 0
    good, defective = scores[~labels], scores[labels]
    metrics = {key: None for key in OPERATING_KEYS}
    metrics["image_counts"] = {"good": int(len(good)), "defective": int(len(defective)),
                               "needed_per_rate": MIN_IMAGES_PER_RATE}
    if len(good) and len(defective):
        for n in OPERATING_RATES:
            if len(defective) >= MIN_IMAGES_PER_RATE:
                metrics[f"tnr_at_fnr_{n}"] = tnr_at_fnr(good, defective, n)
            if len(good) >= MIN_IMAGES_PER_RATE:
                metrics[f"tpr_at_fpr_{n}"] = tpr_at_fpr(good, defective, n)
    if defect_types is not None:
        types = np.asarray(defect_types)
        margins = {} if not len(good) else {
            str(kind): float(defective[types[labels] == kind].min() - good.max())
            for kind in sorted(set(types[labels].tolist()))}
        metrics["margin_per_defect_type"] = margins
        metrics["worst_margin"] = min(margins.values()) if margins else None
    return metrics


def operating_points_note(image_counts):
    """One line on why operating points are n/a (``image_counts`` of ``operating_points``)."""
    return (f"operating points (tnr_at_fnr_n, tpr_at_fpr_n) need at least {image_counts['needed_per_rate']} images "
            f"of the class the rate limits; this test set has {image_counts['good']} good and "
            f"{image_counts['defective']} defective: n/a where too few")


DECISION_KEYS = ("image_threshold", "image_precision", "image_recall", "image_fpr", "image_f1_at_threshold",
                 "pixel_f1_at_threshold")
# The review band's figures: its threshold (None: no band), the share of images it sends to a person, the recall
# and false-alarm rate of the images decided outside it, and the share of all images decided wrongly outside it
# (good as NG, defective as OK).
REVIEW_KEYS = ("review_threshold", "review_share", "recall_outside_review", "fpr_outside_review",
               "wrong_outside_review")


def review_metrics(scores, labels, thresholds):
    """``REVIEW_KEYS`` of ``scores`` with boolean ``labels`` (True: defective) at ``thresholds`` (a model without a
    review threshold sends none to review)."""
    decided = decide(scores, thresholds["image"], thresholds.get("review"))
    outside = decided != REVIEW
    defective, good = labels & outside, ~labels & outside
    wrong = ((decided == NG) & ~labels) | ((decided == OK) & labels)
    return {"review_threshold": thresholds.get("review"),
            "review_share": float(np.mean(~outside)) if len(decided) else None,
            "recall_outside_review": float(np.mean(decided[defective] == NG)) if defective.any() else None,
            "fpr_outside_review": float(np.mean(decided[good] == NG)) if good.any() else None,
            "wrong_outside_review": float(np.mean(wrong)) if len(decided) else None}


def decision_metrics(prediction_scores, gt_labels, prediction_masks, gt_masks, thresholds=None, defect_types=None,
                     resize=None, **kwargs):
    """HiAD-style evaluator of the decisions a model makes at its persisted ``thresholds`` ({"image", "pixel"}):
    ``DECISION_KEYS`` (an image is NG when its score >= the image threshold; pixel F1 of map >= the pixel
    threshold, pooled, after ``resize`` as the pixel metrics), ``REVIEW_KEYS`` and ``recall_per_defect_type``
    (``defect_types``: one name per image). Empty without thresholds."""
    if not thresholds:
        return {}
    scores, labels = np.asarray(prediction_scores, np.float64), np.asarray(gt_labels) > 0
    anomalous = flagged(scores, thresholds["image"])
    tp, fp = int((anomalous & labels).sum()), int((anomalous & ~labels).sum())
    fn, tn = int((~anomalous & labels).sum()), int((~anomalous & ~labels).sum())
    metrics = {"image_threshold": float(thresholds["image"]),
               "image_precision": tp / (tp + fp) if tp + fp else None,
               "image_recall": tp / (tp + fn) if tp + fn else None,
               "image_fpr": fp / (fp + tn) if fp + tn else None,
               "image_f1_at_threshold": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
               "pixel_f1_at_threshold": None, **review_metrics(scores, labels, thresholds)}
    if thresholds.get("pixel") is not None and prediction_masks is not None and len(prediction_masks):
        hit = truth = both = 0
        for amap, mask in zip(prediction_masks, gt_masks, strict=True):
            if resize:
                amap, mask = resize_for_evaluation(amap, mask, int(resize))
            decided, defect = flagged(amap, thresholds["pixel"]), np.asarray(mask) > 0
            hit, truth, both = hit + int(decided.sum()), truth + int(defect.sum()), both + int((decided & defect).sum())
        metrics["pixel_f1_at_threshold"] = 2 * both / (hit + truth) if truth else None   # no defect pixel: undefined
    if defect_types is not None:
        types = np.asarray(defect_types)
        metrics["recall_per_defect_type"] = {
            str(kind): float(anomalous[(types == kind) & labels].mean()) for kind in sorted(set(types[labels].tolist()))}
    return metrics
