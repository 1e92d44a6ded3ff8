"""Samplers: the pruned greedy coreset picks exactly what the plain greedy picks; greedy properties;
random/identity samplers; the factory; the memory check; no N x N allocation."""
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import src  # noqa: F401  (sets up the environment before anything else is imported)
from src.utils.errors import InputError
from src.patchcore.sampling import (ApproximateGreedyCoresetSampler, IdentitySampler, RandomSampler, build_sampler,
                                  estimate_peak_bytes)
from src.patchcore.sampling import kcenter_greedy, sampling_def, two_round
from src.patchcore.sampling.kcenter_greedy import (_Blocks, distances_to_point,
                                                 greedy_coreset_plain, greedy_coreset_pruned, squared_norms)


def clustered(n, dim, seed, clusters=8, latent=4, noise=0.01, duplicates=0, offset=0.0):
    """Gaussian clusters in a random ``latent``-dim subspace plus isotropic noise, float32; the last
    ``duplicates`` rows repeat earlier rows exactly (ties)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (clusters, latent))
    labels = rng.integers(0, clusters, n)
    z = means[labels] + rng.normal(0, 0.2, (n, latent))
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T
    x = (z @ basis + rng.normal(0, noise, (n, dim)) + offset).astype(np.float32)
    if duplicates:
        x[n - duplicates:] = x[rng.choice(n - duplicates, duplicates)]
    return x


def test_distances_are_row_independent():
    # The exactness of the pruned greedy rests on this: a row's distance does not depend on
    # which other rows are computed with it, nor on where the rows sit in memory.
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3000, 128)).astype(np.float32) * 3 + 1
    sq = squared_norms(points)
    point = points[17].copy()
    full = distances_to_point(points, sq, point, sq[17])
    for size in (1, 2, 3, 7, 31, 64, 129, 1000):
        rows = np.sort(rng.choice(len(points), size, replace=False))
        misaligned = np.empty(size * 128 + 1, dtype=np.float32)[1:].reshape(size, 128)
        misaligned[...] = points[rows]
        for subset in (np.ascontiguousarray(points[rows]), misaligned):
            assert np.array_equal(distances_to_point(subset, sq[rows], point, sq[17]), full[rows])
    assert full[17] == 0  # a point's distance to itself is exactly zero


@pytest.mark.parametrize("n, dim, percentage, seed, duplicates, offset", [
    (3000, 256, 0.1, 0, 0, 0.0),    # projected to 128 dims
    (3000, 256, 0.3, 1, 300, 0.0),  # duplicated rows: ties
    (2500, 64, 0.1, 2, 0, 0.0),     # D <= 128: not projected
    (2000, 32, 0.2, 3, 0, 30.0),    # far from the origin: large rounding error in |x|^2 - 2x.c + |c|^2
    (400, 16, 1.0, 4, 40, 0.0),     # every point, then repeated picks once all running values are 0
    (7, 5, 1.0, 5, 2, 0.0),         # fewer points than starting points
    (9, 200, 0.5, 6, 0, 0.0),
])
def test_pruned_picks_equal_plain_picks(n, dim, percentage, seed, duplicates, offset):
    features = clustered(n, dim, seed, duplicates=duplicates, offset=offset)
    plain = ApproximateGreedyCoresetSampler(percentage, seed, pruned=False, progress=False).run(features)[1]
    pruned = ApproximateGreedyCoresetSampler(percentage, seed, pruned=True, progress=False).run(features)[1]
    assert plain.dtype == np.int64 and len(plain) == max(1, int(n * percentage))
    np.testing.assert_array_equal(pruned, plain)


def test_pruned_equals_plain_through_several_regroupings_and_both_update_paths():
    structured = clustered(6000, 48, seed=7, duplicates=100)
    start = np.arange(10)
    stats = {}
    pruned = greedy_coreset_pruned(structured.copy(), 900, start, block_schedule=(8, 40, 200), progress=False,
                                   stats=stats)
    np.testing.assert_array_equal(pruned, greedy_coreset_plain(structured, 900, start, progress=False))
    assert stats["visited_fraction"] < 0.5  # the block-by-block path did the work, not full passes
    # Unstructured data: almost every block is touched, so the full-pass path runs.
    noise = np.random.default_rng(8).normal(size=(3000, 64)).astype(np.float32)
    stats = {}
    pruned = greedy_coreset_pruned(noise.copy(), 300, start, block_schedule=(8, 40), progress=False, stats=stats)
    np.testing.assert_array_equal(pruned, greedy_coreset_plain(noise, 300, start, progress=False))
    assert stats["visited_fraction"] > 0.5


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_block_skipping_holds_at_the_boundary(offset):
    # Points on a line: block A around t=0 (radius 1), block B around t=10. A's member at t=1 is 9
    # from the pick at t=10, exactly the pick's distance to A's centre minus A's radius. Its running
    # value sits one float32 step above its computed distance, so the pick must lower it: A may
    # not be skipped.
    rng = np.random.default_rng(38)
    u, v = np.linalg.qr(rng.normal(size=(16, 2)))[0].T
    t = np.array([-1, -0.5, 0, 0.5, 1, 9.75, 10, 10.25])
    points = (t[:, None] * u + offset * v).astype(np.float32)
    sq = squared_norms(points)
    dist = distances_to_point(points, sq, points[6].copy(), sq[6])
    if offset:  # far from the origin, rounding puts the float32 distance below the triangle bound
        exact = points.astype(np.float64)
        triangle_bound = np.linalg.norm(exact[6] - exact[2]) - np.linalg.norm(exact[:5] - exact[2], axis=1).max()
        assert dist[4] < triangle_bound - 1e-3
    running = np.full(len(t), 0.1, dtype=np.float32)
    running[4] = np.nextafter(dist[4], np.float32(np.inf))
    blocks = _Blocks(points.copy(), sq.copy(), running.copy())
    blocks.regroup(np.array([2, 6]))
    assert blocks.counts.tolist() == [5, 3]
    blocks.add_pick(int(np.flatnonzero(blocks.order == 6)[0]))
    np.testing.assert_array_equal(blocks.running[np.argsort(blocks.order)], np.minimum(running, dist))


def test_pruned_greedy_reorders_only_its_own_copy_of_non_contiguous_points():
    features = clustered(1000, 40, seed=9)
    strided = np.asfortranarray(features)
    before = strided.copy()
    picks = greedy_coreset_pruned(strided, 50, np.arange(10), progress=False)
    np.testing.assert_array_equal(strided, before)
    np.testing.assert_array_equal(picks, greedy_coreset_plain(features, 50, np.arange(10), progress=False))


def test_same_seed_same_picks_other_seed_other_picks():
    features = clustered(3000, 256, seed=10)
    first = ApproximateGreedyCoresetSampler(0.05, seed=3, progress=False).run(features)[1]
    again = ApproximateGreedyCoresetSampler(0.05, seed=3, progress=False).run(features)[1]
    other = ApproximateGreedyCoresetSampler(0.05, seed=4, progress=False).run(features)[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_greedy_picks_the_farthest_point_each_time():
    # Checked in float64 with scipy, independently of the implementation (D <= 128: no projection,
    # so the start points are the seed's first draw).
    n, seed, k = 1500, 11, 60
    features = clustered(n, 24, seed)
    picks = ApproximateGreedyCoresetSampler(k / n, seed=seed, progress=False).run(features)[1]
    points = features.astype(np.float64)
    start = np.random.default_rng(seed).choice(n, 10, replace=False)
    running = cdist(points, points[start]).mean(1)
    assert picks[0] == np.argmax(running)
    chosen_values = []
    for pick in picks:
        chosen_values.append(running[pick])
        assert running[pick] >= running.max() * (1 - 1e-5)  # the farthest point (up to float32 rounding)
        running = np.minimum(running, cdist(points, points[pick:pick + 1])[:, 0])
    # the covering radius at each pick never grows, and the picks are distinct while it is positive
    assert np.all(np.diff(chosen_values) <= 1e-5 * chosen_values[0])
    assert len(set(picks.tolist())) == k


def test_sampler_returns_coreset_rows_and_percentage_one_keeps_all():
    features = clustered(1000, 200, seed=12)
    coreset, indices = ApproximateGreedyCoresetSampler(0.1, seed=0, progress=False).run(features)
    assert coreset.shape == (100, 200) and coreset.dtype == np.float32
    np.testing.assert_array_equal(coreset, features[indices])
    coreset, indices = ApproximateGreedyCoresetSampler(1.0, progress=False).run(features)
    assert coreset is features
    np.testing.assert_array_equal(indices, np.arange(1000))


def test_identity_and_random_samplers():
    features = clustered(500, 8, seed=13)
    coreset, indices = IdentitySampler().run(features)
    assert coreset is features and np.array_equal(indices, np.arange(500))
    coreset, indices = RandomSampler(0.1, seed=5).run(features)
    assert indices.dtype == np.int64 and len(indices) == 50 and len(np.unique(indices)) == 50
    np.testing.assert_array_equal(coreset, features[indices])
    np.testing.assert_array_equal(indices, RandomSampler(0.1, seed=5).run(features)[1])
    assert not np.array_equal(indices, RandomSampler(0.1, seed=6).run(features)[1])
    assert len(RandomSampler(0.0001, seed=5).run(features)[1]) == 1  # at least one row


def test_build_sampler_names():
    assert isinstance(build_sampler("identity", 0.1, 0), IdentitySampler)
    assert isinstance(build_sampler("random", 0.1, 0), RandomSampler)
    sampler = build_sampler("approx_greedy_coreset", 0.1, 7)
    assert isinstance(sampler, ApproximateGreedyCoresetSampler) and sampler.seed == 7
    with pytest.raises(InputError, match="unknown sampler 'kmeans'"):
        build_sampler("kmeans", 0.1, 0)


@pytest.mark.parametrize("percentage", [0, -0.1, 1.5, float("nan"), "ten", None])
def test_bad_percentage_is_an_input_error(percentage):
    with pytest.raises(InputError, match="percentage"):
        build_sampler("approx_greedy_coreset", percentage, 0)


def test_bad_features_are_input_errors():
    sampler = ApproximateGreedyCoresetSampler(0.5, progress=False)
    with pytest.raises(InputError, match="shape"):
        sampler.run(np.zeros(10, dtype=np.float32))
    features = clustered(100, 16, seed=14)
    features[37, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sampler.run(features)


def test_memory_check_says_what_to_reduce(monkeypatch):
    features = clustered(2000, 256, seed=15)
    sampler = ApproximateGreedyCoresetSampler(0.1, progress=False)
    extra = sampler.estimate_peak_bytes(2000, 256)
    assert extra == estimate_peak_bytes(2000, 256, 0.1)
    monkeypatch.setattr(sampling_def.psutil, "virtual_memory", lambda: SimpleNamespace(available=extra - 1))
    with pytest.raises(InputError) as error:
        sampler.run(features)
    for advice in ("percentage", "training images", "image size", "target_embed_dimension"):
        assert advice in str(error.value)
    # Features already in memory need only the extra bytes; planning ahead counts them too.
    monkeypatch.setattr(sampling_def.psutil, "virtual_memory", lambda: SimpleNamespace(available=extra + 1))
    assert len(sampler.run(features)[1]) == 200
    with pytest.raises(InputError):
        sampler.check_memory(2000, 256)
    sampler.check_memory(2000, 256, available=extra + features.nbytes)


def test_estimate_grows_with_what_the_message_says_to_reduce():
    base = estimate_peak_bytes(200_000, 1024, 0.1)
    assert estimate_peak_bytes(100_000, 1024, 0.1) < base       # fewer training images / smaller images
    assert estimate_peak_bytes(200_000, 1024, 0.9) > base       # the coreset copy dominates at high percentage
    assert estimate_peak_bytes(200_000, 1024, 0.1, pruned=False) < base


def test_no_n_by_n_allocation():
    n = 60_000
    features = clustered(n, 256, seed=16)
    tracemalloc.start()
    try:
        coreset, _ = ApproximateGreedyCoresetSampler(0.002, progress=False).run(features)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(coreset) == 120
    assert peak < n * n * 4 / 200  # an N x N float32 matrix would be 14.4 GB
    assert peak <= estimate_peak_bytes(n, 256, 0.002)  # numpy's share of the estimate bounds it


def test_progress_bar_only_when_asked(capsys):
    features = clustered(300, 16, seed=17)
    ApproximateGreedyCoresetSampler(0.1, progress=False).run(features)
    assert capsys.readouterr().err == ""
    ApproximateGreedyCoresetSampler(0.1, progress=True).run(features)
    err = capsys.readouterr().err
    assert "30/30" in err and err.count("\n") <= 2


# ------------------------------------------------------------------------------------------ two-round coreset


def coverage(points, picks):
    """The largest distance of any point to its nearest pick."""
    return float(cdist(points, points[picks]).min(1).max())


def test_shares_split_a_total_in_proportion_without_exceeding_a_part():
    assert two_round.shares([10, 10, 10], 7).tolist() == [3, 2, 2]
    counts = two_round.shares([5, 1000, 3], 100)
    assert counts.sum() == 100 and (counts <= [5, 1000, 3]).all()
    assert two_round.shares([4, 4], 8).tolist() == [4, 4]


@pytest.mark.parametrize("chunk_size, union_piece", [(700, 65536), (500, 150)])   # one union greedy, or pieces
def test_two_round_picks_distinct_points_deterministically_close_to_the_exact_radius(chunk_size, union_piece,
                                                                                     monkeypatch):
    monkeypatch.setattr(two_round, "UNION_PIECE", union_piece)
    points = clustered(6000, 24, seed=21)
    points[::200] += np.random.default_rng(1).normal(0, 3, (30, 24)).astype(np.float32)   # rare outliers
    k = 120
    picks = two_round.two_round_coreset_indices(points, k, np.random.default_rng(3), chunk_size, 2.0, workers=2)
    assert picks.dtype == np.int64 and len(picks) == k and len(np.unique(picks)) == k
    # the same generator state gives the same picks, whatever the number of threads
    again = two_round.two_round_coreset_indices(points, k, np.random.default_rng(3), chunk_size, 2.0, workers=1)
    np.testing.assert_array_equal(picks, again)
    exact = greedy_coreset_plain(points, k, np.random.default_rng(3).choice(6000, 10, replace=False), progress=False)
    assert coverage(points, picks) <= 1.5 * coverage(points, exact)
    # far better than as many random points, which miss the rare ones
    assert coverage(points, picks) < 0.5 * coverage(points, np.random.default_rng(0).choice(6000, k, replace=False))


def test_sampler_switches_to_two_rounds_above_the_threshold_only():
    features = clustered(3000, 64, seed=22)
    exact = ApproximateGreedyCoresetSampler(0.05, seed=1, progress=False)
    below = ApproximateGreedyCoresetSampler(0.05, seed=1, two_round_above=3000, progress=False)
    above = ApproximateGreedyCoresetSampler(0.05, seed=1, two_round_above=2999, chunk_size=512, progress=False)
    np.testing.assert_array_equal(below.run(features)[1], exact.run(features)[1])
    assert below.stats["method"] == "exact_greedy"
    coreset, indices = above.run(features)
    assert above.stats["method"] == "two_round" and len(indices) == 150
    np.testing.assert_array_equal(coreset, features[indices])
    assert not np.array_equal(np.sort(indices), np.sort(exact.run(features)[1]))


def test_sampler_specs_by_name_with_options_and_their_errors():
    sampler = build_sampler({"name": "approx_greedy_coreset", "two_round_above": 10, "oversample": 3}, 0.1, 2)
    assert sampler.options() == {"name": "approx_greedy_coreset", "two_round_above": 10, "chunk_size": 16384,
                                 "oversample": 3.0}
    assert build_sampler("random", 0.1).options() == {"name": "random"}
    with pytest.raises(InputError, match="bad parameters for sampler 'random'.*chunk_size"):
        build_sampler({"name": "random", "chunk_size": 5}, 0.1)
    with pytest.raises(InputError, match="two_round_above"):
        build_sampler({"name": "approx_greedy_coreset", "two_round_above": -1}, 0.1)
    with pytest.raises(InputError, match="oversample"):
        build_sampler({"name": "approx_greedy_coreset", "oversample": 0.5}, 0.1)


def test_one_interface_projection_then_selection_equals_run():
    # the spilled fit's way (project batch by batch into its own array, then select) and run() agree
    features = clustered(2000, 200, seed=23)
    for spec in ("approx_greedy_coreset", {"name": "approx_greedy_coreset", "two_round_above": 0, "chunk_size": 300},
                 "random"):
        sampler = build_sampler(spec, 0.1, 4)
        projection = sampler.projection(200)
        projected = np.empty((2000, projection.out_dim), np.float32)
        for start in range(0, 2000, 256):
            projection.project(features[start:start + 256], out=projected[start:start + 256])
        np.testing.assert_array_equal(sampler.select(projected, projection), build_sampler(spec, 0.1, 4).run(features)[1])


def test_continued_greedy_adds_only_points_farther_than_the_banks_spacing_and_covers_the_rest():
    # Checked in float64 with scipy: the bank is a finished greedy coreset; the new points are half points it was
    # chosen from (covered: nothing to add) and half a shifted surface (new: added until covered).
    old = clustered(1200, 24, seed=21)
    sampler = ApproximateGreedyCoresetSampler(0.05, seed=0, progress=False)
    bank = sampler.run(old)[0]
    same, shifted = old[:150], clustered(150, 24, seed=22, offset=3.0)
    new = np.concatenate([same, shifted])
    picks = sampler.extend(bank, new, sampler.projection(24))
    spacing = sampler.stats["spacing"]
    pairwise = cdist(bank.astype(np.float64), bank.astype(np.float64))
    np.fill_diagonal(pairwise, np.inf)
    assert spacing == pytest.approx(pairwise.min(), rel=1e-4)
    assert sampler.stats["method"] == "continued_greedy" and picks.dtype == np.int64
    assert len(picks) and set(picks.tolist()) <= set(range(150, 300))   # the known surface adds nothing
    extended = np.concatenate([bank, new[picks]]).astype(np.float64)
    # every new point ends within the spacing of the extended bank, and each pick was farther than it when chosen
    assert cdist(new.astype(np.float64), extended).min(1).max() <= spacing * (1 + 1e-4)
    for k, pick in enumerate(picks):
        assert cdist(new[pick:pick + 1].astype(np.float64), extended[:len(bank) + k]).min() > spacing * (1 - 1e-4)
    again = ApproximateGreedyCoresetSampler(0.05, seed=0, progress=False)
    np.testing.assert_array_equal(again.extend(bank, new, again.projection(24)), picks)


def test_extension_keeps_every_new_point_at_percentage_one_and_a_share_at_random():
    points = clustered(200, 8, seed=23)
    assert np.array_equal(IdentitySampler().extend(points[:50], points, None), np.arange(200))
    full = ApproximateGreedyCoresetSampler(1.0, progress=False)
    assert np.array_equal(full.extend(points[:50], points, full.projection(8)), np.arange(200))
    random = RandomSampler(0.1, seed=5)
    chosen = random.extend(points[:50], points, random.projection(8))
    assert len(chosen) == 20 and len(np.unique(chosen)) == 20


def test_continued_greedy_picks_what_a_pass_over_every_point_picks():
    # more picks than one compaction period, points on known and on new surface
    bank = ApproximateGreedyCoresetSampler(0.2, seed=0, progress=False).run(clustered(3000, 32, 0))[0]
    new = np.concatenate([clustered(2000, 32, 10, offset=2.0), clustered(2000, 32, 0)])
    picks, spacing = kcenter_greedy.continued_greedy(bank, new, progress=False)
    running = kcenter_greedy.nearest_distances(new, bank)
    sq_norms = squared_norms(new)
    expected = []
    while running.max() > spacing:
        expected.append(int(np.argmax(running)))
        np.minimum(running, distances_to_point(new, sq_norms, new[expected[-1]].copy(), sq_norms[expected[-1]]),
                   out=running)
    assert len(expected) > 10 * kcenter_greedy.COMPACT_EVERY
    np.testing.assert_array_equal(picks, expected)
