"""Metrics on small maps whose answers are known by construction, by hand, or from scikit-learn."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import src  # noqa: F401
from src.evaluation.evaluate import default_evaluators, evaluate_maps
from src.evaluation.metrics import (METRIC_KEYS, MIN_IMAGES_PER_RATE, OPERATING_KEYS, compute_imagewise_metrics,
                                    compute_pixelwise_metrics, format_table, image_auroc, mean_row, operating_points,
                                    operating_points_note, pixel_ap, pixel_auroc, pixel_f1, pro_score,
                                    resize_for_evaluation)


def blob_masks(seed, count=4, size=24):
    """A few images with several rectangular defects each, plus one normal image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size), np.uint8)
    for mask in masks[:-1]:
        for _ in range(3):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 6, 2)
            mask[y:y + h, x:x + w] = 1
    return masks


def test_perfect_maps_score_one_and_reversed_maps_score_zero():
    masks = blob_masks(0)
    perfect = masks.astype(np.float32)
    labels = masks.reshape(len(masks), -1).max(1)
    metrics = evaluate_maps(default_evaluators(None), perfect.reshape(len(masks), -1).max(1), labels, perfect, masks)
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics == {key: 1.0 for key in METRIC_KEYS}

    reversed_maps = 1.0 - perfect
    prevalence = masks.mean()
    assert pixel_auroc(reversed_maps, masks) == 0.0
    assert pro_score(reversed_maps, masks) == 0.0
    assert image_auroc(1.0 - labels, labels) == 0.0
    # Only the lowest threshold (every pixel flagged) finds defects: precision = prevalence, recall = 1.
    assert pixel_ap(reversed_maps, masks) == pytest.approx(prevalence)
    assert pixel_f1(reversed_maps, masks) == pytest.approx(2 * prevalence / (1 + prevalence))


def test_four_pixel_example_by_hand():
    amap = np.array([[[0.1, 0.4], [0.35, 0.8]]])
    mask = np.array([[[0, 0], [1, 1]]])
    # Pairs (defect, normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4.
    assert pixel_auroc(amap, mask) == pytest.approx(0.75)
    # Thresholds 0.8, 0.4, 0.35, 0.1: (precision, recall) = (1, 1/2), (1/2, 1/2), (2/3, 1), (1/2, 1).
    # AP = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 + 0 * 1/2 = 5/6.
    assert pixel_ap(amap, mask) == pytest.approx(5 / 6)
    # F1 = 2PR/(P+R): 2/3, 1/2, 4/5, 2/3 -> 4/5.
    assert pixel_f1(amap, mask) == pytest.approx(0.8)
    # One region {0.35, 0.8}: overlap 1/2 from FPR 0 (t=0.8) to FPR 1/2 (t=0.4) -> flat 1/2 up to 0.3.
    assert pro_score(amap, mask) == pytest.approx(0.5)


def test_pro_averages_regions_whatever_their_size_unlike_pixel_auroc():
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 2:12, 2:12] = 1      # 100 pixels, detected
    mask[0, 30:32, 30:32] = 1    # 4 pixels, missed: scored below every normal pixel
    amap = np.full(mask.shape, 0.5)
    amap[0, 2:12, 2:12] = 1.0
    amap[0, 30:32, 30:32] = 0.0
    assert pro_score(amap, mask) == pytest.approx(0.5)
    assert pixel_auroc(amap, mask) == pytest.approx(100 / 104)


def test_pro_regions_are_8_connected_per_image():
    mask = np.zeros((2, 12, 12), np.uint8)
    mask[0, 2, 2] = mask[0, 3, 3] = 1   # diagonal neighbours: one region
    mask[1, 8, 8] = 1                   # another image: its own region
    amap = np.full(mask.shape, 0.5)
    amap[0, 2, 2], amap[0, 3, 3], amap[1, 8, 8] = 1.0, 0.0, 0.0
    # Regions {(2,2),(3,3)} half found and {(8,8)} not found: mean 1/4 (4-connectivity would give 1/3).
    assert pro_score(amap, mask) == pytest.approx(0.25)


def pro_by_thresholds(maps, masks, thresholds, max_fpr=0.3):
    """Direct definition, one threshold at a time: mean region overlap and FPR, integrated up to max_fpr."""
    regions = []
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        regions += [(index, labels == k) for k in range(1, count + 1)]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in sorted(thresholds, reverse=True):
        flagged = maps >= t
        fpr = flagged[normal].mean()
        overlap = np.mean([flagged[index][region].mean() for index, region in regions])
        points.append((fpr, overlap))
    fpr, overlap = map(np.array, zip(*points))
    keep = fpr <= max_fpr
    x = np.append(fpr[keep], max_fpr)
    y = np.append(overlap[keep], np.interp(max_fpr, fpr, overlap))
    return np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pixel_metrics_agree_with_scikit_learn_and_the_direct_pro_definition(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(seed)
    # Coarse levels create many ties; defects score higher on average so the curves are non-trivial.
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 1)
    labels, scores = masks.ravel(), maps.ravel()
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert pixel_f1(maps, masks) == pytest.approx(f1.max(), abs=1e-12)
    assert pro_score(maps, masks) == pytest.approx(pro_by_thresholds(maps, masks, np.unique(maps)), abs=1e-12)
    for max_fpr in (0.05, 1.0):
        assert pro_score(maps, masks, max_fpr=max_fpr) == pytest.approx(
            pro_by_thresholds(maps, masks, np.unique(maps), max_fpr), abs=1e-12)
    smooth = rng.random(masks.shape) + 0.6 * masks   # no ties: every pixel is a threshold
    evenly = np.linspace(smooth.min(), smooth.max(), 7)
    assert pro_score(smooth, masks, num_thresholds=7) == pytest.approx(
        pro_by_thresholds(smooth, masks, evenly), abs=1e-12)
    assert pro_score(smooth, masks) == pytest.approx(pro_by_thresholds(smooth, masks, smooth.ravel()), abs=1e-12)


def test_undefined_metrics_are_none():
    normal_only = np.zeros((3, 8, 8), np.uint8)
    maps = np.random.default_rng(0).random(normal_only.shape)
    metrics = evaluate_maps(default_evaluators(None), maps.max(axis=(1, 2)), [0, 0, 0], maps, normal_only)
    assert metrics == {key: None for key in METRIC_KEYS}
    everything_defect = np.ones((2, 8, 8), np.uint8)
    metrics = evaluate_maps(default_evaluators(None), [0.3, 0.9], [1, 1], maps[:2], everything_defect)
    assert metrics == {key: None for key in METRIC_KEYS}
    assert compute_imagewise_metrics([0.1, 0.2], [1, 1]) == {"image_auroc": None}
    assert compute_imagewise_metrics([0.1, 0.2, 0.3], [0, 1, 1]) == {"image_auroc": 1.0}


def test_mismatched_or_invalid_maps_raise():
    with pytest.raises(ValueError, match="differ"):
        pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(np.full((1, 4, 4), np.nan), np.eye(4)[None])


def max_pool_reference(mask, size):
    """Output cell (i, j) is a defect when a defect pixel overlaps it by a positive area."""
    height, width = mask.shape
    out = np.zeros((size, size), np.uint8)
    for y, x in zip(*np.nonzero(mask)):
        rows = range(int(np.floor(y * size / height)), int(np.ceil((y + 1) * size / height)))
        cols = range(int(np.floor(x * size / width)), int(np.ceil((x + 1) * size / width)))
        for i in rows:
            for j in cols:
                out[i, j] = 1
    return out


@pytest.mark.parametrize("source, size", [(512, 64), (1000, 64), (100, 30), (97, 41)])
def test_resize_max_pools_masks_and_area_averages_maps(source, size):
    rng = np.random.default_rng(source)
    mask = (rng.random((source, source)) > 0.9995).astype(np.uint8)
    mask[source // 3, source // 5] = 1
    amap = rng.random((source, source)).astype(np.float32)
    small_map, small_mask = resize_for_evaluation(amap, mask, size)
    assert small_mask.shape == small_map.shape == (size, size)
    np.testing.assert_array_equal(small_mask, max_pool_reference(mask, size))
    if source % size == 0:
        factor = source // size
        blocks = amap.reshape(size, factor, size, factor)
        np.testing.assert_allclose(small_map, blocks.mean(axis=(1, 3)), atol=1e-5)


def test_pixelwise_evaluator_with_resize_keeps_a_one_pixel_defect():
    masks = np.zeros((2, 600, 600), np.uint8)
    masks[0, 301, 417] = 1
    maps = np.zeros(masks.shape, np.float32)
    maps[0, 301, 417] = 1.0
    metrics = compute_pixelwise_metrics([1.0, 0.0], [1, 0], maps, masks, resize=64)
    assert metrics == {"pixel_auroc": 1.0, "pixel_ap": 1.0, "pixel_f1": 1.0, "pro": 1.0}
    assert compute_pixelwise_metrics([1.0, 0.0], [1, 0], list(maps), list(masks)) == metrics


def test_table_layout_and_mean_row():
    columns = ["clsname", "image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1"]
    rows = [dict(clsname="unknown", image_auroc=1.0, pixel_auroc=0.99103312, pixel_ap=0.5191224, pixel_f1=0.5433031)]
    expected = "\n".join([
        "|  clsname  |  image_auroc  |  pixel_auroc  |  pixel_ap  |  pixel_f1  |",
        "|:---------:|:-------------:|:-------------:|:----------:|:----------:|",
        "|  unknown  |       1       |   0.991033    |  0.519122  |  0.543303  |",
        "|   mean    |       1       |   0.991033    |  0.519122  |  0.543303  |",
    ])
    assert format_table(rows + [mean_row(rows, columns)], columns) == expected

    rows = [dict(clsname="a", pro=0.5, pixel_ap=None), dict(clsname="b", pro=None, pixel_ap=None),
            dict(clsname="c", pro=0.75, pixel_ap=None)]
    mean = mean_row(rows, ["clsname", "pro", "pixel_ap"])
    assert mean == {"clsname": "mean", "pro": 0.625, "pixel_ap": None}
    table = format_table(rows + [mean], ["clsname", "pro", "pixel_ap"]).splitlines()
    assert table[3] == "|     b     |  n/a  |    n/a     |"
    assert table[-1] == "|   mean    | 0.625 |    n/a     |"


def _best_rate_brute_force(good, defect, percent, rate_of, limit_of):
    """Over every threshold (each score, just above each score, +inf; NG when score >= threshold): the best
    ``rate_of`` among those whose ``limit_of`` is at most ``percent``%."""
    candidates = np.concatenate([good, defect, np.nextafter(np.concatenate([good, defect]), np.inf), [np.inf]])
    return max(rate_of(good, defect, t) for t in candidates if limit_of(good, defect, t) <= percent / 100 + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_points_are_the_best_rates_within_the_allowed_errors(seed):
    rng = np.random.default_rng(seed)
    good = np.round(rng.normal(0, 1, 40), 1)          # rounded: ties within and across the classes
    defect = np.round(rng.normal(1.5, 1, 30), 1)
    scores, labels = np.concatenate([good, defect]), np.r_[np.zeros(40), np.ones(30)]
    metrics = operating_points(scores, labels, defect_types=["good"] * 40 + ["cut"] * 20 + ["hole"] * 10)
    for n in (1, 5):
        assert metrics[f"tnr_at_fnr_{n}"] == _best_rate_brute_force(
            good, defect, n, lambda g, d, t: np.mean(g < t), lambda g, d, t: np.mean(d < t))
        assert metrics[f"tpr_at_fpr_{n}"] == _best_rate_brute_force(
            good, defect, n, lambda g, d, t: np.mean(d >= t), lambda g, d, t: np.mean(g >= t))
    assert metrics["margin_per_defect_type"] == {"cut": defect[:20].min() - good.max(),
                                                 "hole": defect[20:].min() - good.max()}
    assert metrics["worst_margin"] == min(metrics["margin_per_defect_type"].values())
    assert metrics["image_counts"] == {"good": 40, "defective": 30, "needed_per_rate": MIN_IMAGES_PER_RATE}


def test_operating_points_are_not_reported_from_too_few_images_of_the_limited_class():
    good, defect = np.arange(25.0), np.arange(10.0, 15.0)     # 25 good, 5 defective
    metrics = operating_points(np.r_[good, defect], np.r_[np.zeros(25), np.ones(5)], defect_types=None)
    assert metrics["tnr_at_fnr_1"] is None and metrics["tnr_at_fnr_5"] is None   # the rate limits 5 defective
    assert metrics["tpr_at_fpr_5"] == 0.0 and metrics["tpr_at_fpr_1"] == 0.0      # 25 good: reported
    assert "worst_margin" not in metrics
    note = operating_points_note(metrics["image_counts"])
    assert "25 good and 5 defective" in note and "at least 20" in note
    single = operating_points([0.1, 0.2], [0, 0], defect_types=["good", "good"])
    assert all(single[key] is None for key in OPERATING_KEYS) and single["worst_margin"] is None
