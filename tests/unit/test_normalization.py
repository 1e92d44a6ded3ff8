"""Score normaliser (anchors, monotonicity, JSON round trip, degenerate input) and validation thresholds."""
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

import src  # noqa: F401
from src.utils.errors import InputError
from src.decisions.thresholds import PIXEL_BINS, Thresholds, choose_thresholds, pixel_threshold
from src.patchcore.normalization import EDGE_DEPTH, EdgeRings, ScoreNormalizer, edge_distance, score_threshold


def test_anchors_map_to_documented_values():
    normalizer = ScoreNormalizer.fit(np.arange(101, dtype=np.float64))   # median 50, 0.99 quantile 99
    assert (normalizer.low, normalizer.high) == (50.0, 99.0)
    values = normalizer.transform(np.array([50.0, 99.0, 148.0]))
    np.testing.assert_allclose(values, [0.05, 0.5, 0.95], atol=1e-12)
    assert ScoreNormalizer.fit(np.arange(101), quantiles=(0.1, 0.9)).high == pytest.approx(90.0)


def test_transform_is_strictly_increasing_and_bounded():
    normalizer = ScoreNormalizer.fit(np.random.default_rng(0).gamma(2.0, 1.0, 5000))
    scores = np.linspace(-1e4, 1e5, 200001)
    values = normalizer.transform(scores)
    assert values.dtype == np.float64 and np.all(np.diff(values) > 0)
    assert values.min() > 0 and values.max() < 1
    as_float32 = normalizer.transform(scores.astype(np.float32))
    assert as_float32.dtype == np.float32 and np.all(np.diff(as_float32) >= 0)
    assert as_float32.min() >= 0 and as_float32.max() <= 1
    grid = np.arange(12.0).reshape(3, 4)
    assert normalizer.transform(grid).shape == (3, 4)


def test_rankings_and_auroc_are_unchanged():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(1, 0.3, 500), rng.normal(2, 0.8, 100)]).astype(np.float32)
    labels = np.r_[np.zeros(500), np.ones(100)]
    normalizer = ScoreNormalizer.fit(scores[:400])
    assert roc_auc_score(labels, normalizer.transform(scores)) == roc_auc_score(labels, scores)


def test_json_round_trip_gives_identical_numbers():
    rng = np.random.default_rng(2)
    normalizer = ScoreNormalizer.fit(rng.lognormal(0.1, 0.7, 999), quantiles=(0.25, 0.995),
                                     anomalous_scores=rng.lognormal(1.5, 0.5, 50))
    restored = ScoreNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored == normalizer
    scores = rng.lognormal(0.5, 1.0, (64, 64)).astype(np.float32)
    assert np.array_equal(restored.transform(scores), normalizer.transform(scores))


def test_synthetic_anomalies_move_the_half_point_to_the_best_decision():
    normal, anomalous = np.arange(10.0), np.arange(20.0, 30.0)
    normalizer = ScoreNormalizer.fit(normal, anomalous_scores=anomalous)
    # the half point sits just above the highest normal score, where the best decision is
    assert normalizer.anchored_by_anomalies and normalizer.high == just_above(9.0)
    assert normalizer.transform(np.array([just_above(9.0)]))[0] == pytest.approx(0.5)
    assert normalizer.transform(np.array([9.0]))[0] < 0.5
    below = ScoreNormalizer.fit(normal, anomalous_scores=np.array([0.0, 1.0]))   # best threshold below the median
    assert not below.anchored_by_anomalies and below.high == pytest.approx(np.quantile(normal, 0.99))


def test_constant_scores_fall_back_to_a_steep_step():
    normalizer = ScoreNormalizer.fit(np.full(50, 3.0))
    values = normalizer.transform(np.array([2.9, 3.0, 3.001, 4.0]))
    assert np.all(np.isfinite(values))
    assert values[1] == pytest.approx(0.05) and values[0] < 0.05 and values[2] > 0.95 and values[3] > values[2]
    assert np.all(np.isfinite(ScoreNormalizer.fit(np.zeros(5)).transform(np.array([0.0, 1e-9, 1.0]))))


@pytest.mark.parametrize("scores, kwargs", [([1.0], {}), ([], {}), ([1.0, np.nan, 2.0], {}),
                                            ([1.0, np.inf], {}), ([1.0, 2.0], dict(quantiles=(0.9, 0.5))),
                                            ([1.0, 2.0], dict(quantiles=(0.5, 1.5))),
                                            ([1.0, 2.0], dict(anomalous_scores=[np.nan]))])
def test_bad_fits_are_input_errors(scores, kwargs):
    with pytest.raises(InputError):
        ScoreNormalizer.fit(np.asarray(scores), **kwargs)


@pytest.mark.parametrize("data", [None, {}, {"method": "minmax", "low": 0, "high": 1},
                                  {"method": "quantile-rational-sigmoid-v1", "low": 0},
                                  {"method": "quantile-rational-sigmoid-v1", "low": 2.0, "high": 1.0,
                                   "quantiles": [0.5, 0.99], "anchored_by_anomalies": False}])
def test_bad_dicts_are_input_errors(data):
    with pytest.raises(InputError):
        ScoreNormalizer.from_dict(data)


def just_above(value):
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def test_image_threshold_known_answers():
    # Just above the highest score left unflagged, not midway: a subtler defect at 0.31 is caught too.
    assert score_threshold([0.1, 0.2, 0.3], [0.7, 0.8]) == (just_above(0.3), 1.0, "max_f1")
    assert 0.3 < just_above(0.3) < 0.3 + 1e-7
    # Flagging >= 0.5 catches all 3 anomalies with one false alarm (F1 6/7), better than >= 0.7 (F1 0.8).
    threshold, f1, _ = score_threshold([0.1, 0.2, 0.3, 0.6], [0.5, 0.7, 0.8])
    assert threshold == just_above(0.3) and f1 == pytest.approx(6 / 7)
    # Tied normal and anomalous score: the tie is flagged as a whole.
    threshold, f1, _ = score_threshold([0.0, 1.0], [1.0, 2.0])
    assert threshold == just_above(0.0) and f1 == pytest.approx(0.8)
    # Everything flagged: the lowest score itself.
    assert score_threshold([0.5], [0.2, 0.3, 0.4, 0.6])[0] == 0.2
    # A gap narrower than a float32 step: the lowest flagged score itself, never above it.
    assert score_threshold([0.3], [0.3 + 1e-12]) == (0.3 + 1e-12, 1.0, "max_f1")
    normal = np.arange(1000.0)
    assert score_threshold(normal) == (pytest.approx(np.quantile(normal, 0.99)), None, "normal_quantile")


def brute_force_best_f1(normal, anomalous):
    scores, labels = np.r_[normal, anomalous], np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return max(f1_score(labels, scores >= t) for t in np.unique(scores))


def test_image_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        normal, anomalous = rng.normal(0, 1, 40).round(1), rng.normal(1.2, 1, 15).round(1)   # rounding makes ties
        threshold, f1, _ = score_threshold(normal, anomalous)
        assert f1 == pytest.approx(brute_force_best_f1(normal, anomalous))
        labels = np.r_[np.zeros(40), np.ones(15)]
        assert f1_score(labels, np.r_[normal, anomalous] >= threshold) == pytest.approx(f1)


def separable_maps():
    rng = np.random.default_rng(4)
    maps, masks = [], []
    for k in range(3):
        mask = np.zeros((32, 40), np.uint8)
        if k:
            mask[5:15, 10:30] = 1
        maps.append(np.where(mask > 0, rng.uniform(0.7, 1.0, mask.shape), rng.uniform(0.0, 0.3, mask.shape)))
        masks.append(mask)
    return maps, masks


def test_pixel_threshold_separates_known_classes():
    maps, masks = separable_maps()
    threshold, f1, method = pixel_threshold(maps, masks)
    scores, labels = np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
    normal_max, defect_min = scores[labels == 0].max(), scores[labels == 1].min()
    bin_width = (scores.max() - scores.min()) / PIXEL_BINS
    assert method == "max_f1" and f1 == 1.0
    assert normal_max < threshold <= defect_min and threshold == pytest.approx(normal_max, abs=2 * bin_width)


def test_pixel_threshold_is_near_the_exact_best_f1():
    rng = np.random.default_rng(5)
    masks = [(rng.uniform(size=(24, 24)) < 0.2).astype(np.uint8) for _ in range(4)]
    maps = [rng.normal(0, 1, m.shape).astype(np.float32) + 1.5 * m for m in masks]
    threshold, f1, _ = pixel_threshold(maps, masks)
    scores, labels = np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
    _, exact_f1, _ = score_threshold(scores[labels == 0], scores[labels == 1])
    assert f1 == pytest.approx(exact_f1, abs=1e-3)
    assert f1_score(labels, scores >= threshold) == pytest.approx(exact_f1, abs=1e-3)


def test_pixel_threshold_without_defects_is_a_normal_quantile():
    rng = np.random.default_rng(6)
    maps = [rng.uniform(0, 10, (30, 30)) for _ in range(2)]
    masks = [np.zeros((30, 30), np.uint8)] * 2
    threshold, f1, method = pixel_threshold(maps, masks, normal_quantile=0.9)
    exact = np.quantile(np.concatenate([m.ravel() for m in maps]), 0.9)
    assert method == "normal_quantile" and f1 is None
    assert exact <= threshold <= exact + 2 * 10 / PIXEL_BINS


def test_choose_thresholds_and_json_round_trip():
    maps, masks = separable_maps()
    chosen = choose_thresholds([0.1, 0.2, 0.3], [0.7, 0.8], maps, masks)
    assert chosen.image == just_above(0.3) and chosen.image_method == "max_f1" and chosen.pixel_f1 == 1.0
    restored = Thresholds.from_dict(json.loads(json.dumps(chosen.to_dict())))
    assert restored == chosen
    only_normal = choose_thresholds([0.1, 0.2, 0.3])
    assert only_normal.pixel is None and only_normal.image_method == "normal_quantile"
    assert only_normal.image == pytest.approx(np.quantile([0.1, 0.2, 0.3], 0.99))


def test_constant_maps_do_not_divide_by_zero():
    maps, masks = [np.full((8, 8), 2.0)] * 2, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)]
    threshold, f1, _ = pixel_threshold(maps, masks)
    assert threshold == 2.0 and f1 == pytest.approx(2 / 3)   # everything flagged: precision 1/2, recall 1


def test_bad_threshold_inputs_are_input_errors():
    with pytest.raises(InputError, match="no normal"):
        choose_thresholds([], [1.0])
    with pytest.raises(InputError):
        choose_thresholds([np.nan, 1.0])
    with pytest.raises(InputError, match="differ"):
        choose_thresholds([0.1], [], [np.zeros((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(InputError, match="without their masks"):
        choose_thresholds([0.1], [], [np.zeros((4, 4))])
    with pytest.raises(InputError, match="no normal pixels"):
        pixel_threshold([np.zeros((4, 4))], [np.ones((4, 4))])
    with pytest.raises(InputError):
        Thresholds.from_dict({"image": 0.5})


def ringed_grids(rng, count=40, size=24):
    """Normal grids whose cells one in from the edge run high and wide, as a tile's do next to the padding."""
    grids = rng.normal(1.0, 0.1, (count, size, size)).astype(np.float32)
    ring = edge_distance((size, size), EDGE_DEPTH) == 1
    grids[:, ring] = grids[:, ring] * 3 + 2
    return grids, ring


def test_edge_rings_put_every_ring_on_the_interior_and_keep_the_order_within_a_ring():
    grids, ring = ringed_grids(np.random.default_rng(7))
    rings = EdgeRings.fit(grids, np.ones(grids.shape, bool))
    assert len(rings.low) == EDGE_DEPTH + 1
    equalised = rings.apply(grids)
    assert equalised.dtype == np.float32
    interior = edge_distance(grids.shape[1:], EDGE_DEPTH) == EDGE_DEPTH
    np.testing.assert_array_equal(equalised[:, interior], grids[:, interior])      # the interior as it was
    for cells in (equalised[:, ring], equalised[:, interior]):
        assert np.quantile(cells, (0.5, 0.99)) == pytest.approx(np.quantile(grids[:, interior], (0.5, 0.99)), rel=1e-5)
    assert np.array_equal(np.argsort(equalised[:, ring].ravel()), np.argsort(grids[:, ring].ravel()))
    # before: the ring holds every grid's maximum; after: it is as likely as the interior to hold it
    assert (grids.reshape(len(grids), -1).argmax(1) == np.flatnonzero(ring.ravel())[:, None]).any(0).all()
    top = equalised.reshape(len(grids), -1).argmax(1)
    assert np.isin(top, np.flatnonzero(ring.ravel())).mean() < 0.5


def test_a_task_normaliser_fits_the_rings_on_normal_cells_and_round_trips():
    grids, ring = ringed_grids(np.random.default_rng(8))
    anomalous = np.zeros(grids.shape, bool)
    anomalous[:5, 10:14, 10:14] = True
    grids[anomalous] += 5.0
    normalizer = ScoreNormalizer.fit_grids(grids, anomalous)
    assert normalizer.edge_rings == EdgeRings.fit(grids, ~anomalous)
    restored = ScoreNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored == normalizer
    np.testing.assert_array_equal(restored.transform_grids(grids), normalizer.transform(normalizer.edge_rings.apply(grids)))
    plain = ScoreNormalizer.fit_grids(grids, anomalous, edge_depth=0)
    assert plain.edge_rings is None and np.array_equal(plain.transform_grids(grids), plain.transform(grids))
    old = {k: v for k, v in plain.to_dict().items() if k != "edge_rings"}   # written before edge rings
    assert ScoreNormalizer.from_dict(old) == plain


def test_edge_rings_on_small_grids_and_bad_dicts():
    assert edge_distance((3, 5), EDGE_DEPTH).max() == 1 and edge_distance((1, 4), EDGE_DEPTH).max() == 0
    rings = EdgeRings.fit(np.random.default_rng(9).normal(size=(6, 5, 5)), np.ones((6, 5, 5), bool))
    assert len(rings.low) == 3   # rings 0, 1 and the centre
    for data in ({"low": [1.0], "high": [0.5]}, {"low": [0.0, 1.0], "high": [2.0]}, {"high": [1.0]}):
        with pytest.raises(InputError):
            EdgeRings.from_dict(data)
