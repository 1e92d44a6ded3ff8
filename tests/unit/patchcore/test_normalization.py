"""Score normaliser (anchors, monotonicity, JSON round trip, degenerate input) and validation thresholds."""
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import src  # noqa: F401
from src.utils.errors import InputError
from conftest import just_above
from src.patchcore.normalization import EDGE_DEPTH, EdgeRings, ScoreNormalizer, edge_distance


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
