"""src/patchcore/memory_bank.py: patch scores against the reference's nearest-neighbour distances."""
import os

import numpy as np
import pytest

import src  # noqa: F401
from src.patchcore.memory_bank import MemoryBank, search_spec
from src.utils.errors import InputError


def test_memory_bank_scores_are_mean_squared_nn_distances(tmp_path):
    rng = np.random.default_rng(0)
    bank_rows = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    bank = MemoryBank.from_features(bank_rows, {"seed": 3})
    squared = ((queries[:, None, :] - bank_rows[None]) ** 2).sum(-1)
    expected = np.sort(squared, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(bank.patch_scores(queries, num_nn=3), expected, rtol=1e-4)
    bank.save(str(tmp_path))
    loaded = MemoryBank.load(str(tmp_path))
    assert loaded.metadata["seed"] == 3 and len(loaded) == 50
    np.testing.assert_array_equal(loaded.patch_scores(queries), bank.patch_scores(queries))
    with open(tmp_path / "faiss.index", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match="sha256"):
        MemoryBank.load(str(tmp_path))
    assert MemoryBank.load(str(tmp_path), index=False).metadata["seed"] == 3   # bank.json alone: index not read


def correlated(rows, seed, dimension=384, rank=48):
    """Rows of a few dominant directions plus noise, as a CNN's features are."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((rank, dimension)).astype(np.float32)
    return (rng.standard_normal((rows, rank)).astype(np.float32) @ basis
            + 0.3 * rng.standard_normal((rows, dimension)).astype(np.float32))


@pytest.mark.parametrize("num_nn", [1, 3])
def test_the_pca_refine_search_finds_the_exact_entries_or_scores_higher_never_lower(num_nn):
    bank = MemoryBank.from_features(correlated(2000, 0))
    queries = correlated(3000, 1)
    exact = bank.patch_scores(queries, num_nn)
    assert bank.use_search({"kind": "pca_refine", "dimension": 64, "candidates": 4}) is bank
    assert bank.search == {"kind": "pca_refine", "dimension": 64, "candidates": 4}
    fast = bank.patch_scores(queries, num_nn)
    assert (fast >= exact * (1 - 1e-6)).all()                     # re-ranked exact distances: never below
    assert np.mean(np.isclose(fast, exact, rtol=1e-6)) >= 0.99    # nearly always the exact entries
    # the same setting gives the same scores (the PCA is fitted on the entries, deterministically)
    again = MemoryBank.from_features(correlated(2000, 0)).use_search(bank.search).patch_scores(queries, num_nn)
    assert np.array_equal(again, fast)
    assert np.array_equal(bank.use_search("exact").patch_scores(queries, num_nn), exact)


def test_search_settings_are_checked_and_a_small_bank_stays_exact():
    assert search_spec(None) == "exact" and search_spec("exact") == "exact"
    assert search_spec({"kind": "pca_refine"}) == {"kind": "pca_refine", "dimension": 64, "candidates": 4}
    for bad in ("fast", {"kind": "ivf"}, {"kind": "pca_refine", "dimension": 0},
                {"kind": "pca_refine", "candidates": 2.5}, {"kind": "pca_refine", "rows": 3}):
        with pytest.raises(InputError, match="postprocess.search"):
            search_spec(bad)
    small = MemoryBank.from_features(correlated(100, 0))   # fewer entries than dimensions: no PCA to fit
    assert small.use_search({"kind": "pca_refine"}).search == "exact"
    narrow = MemoryBank.from_features(correlated(500, 0, dimension=64))   # nothing to reduce
    assert narrow.use_search({"kind": "pca_refine", "dimension": 128}).search == "exact"
