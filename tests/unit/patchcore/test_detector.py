"""src/patchcore/detector.py: the streamed fit, row reads, the memory estimate and scoring without some training
images' entries, without a trained model."""
import numpy as np
import pytest

import src  # noqa: F401
from src.patchcore import detector as detector_module
from src.patchcore.detector import HRPatchCore, estimate_fit_bytes, read_rows
from src.patchcore.memory_bank import MemoryBank
from src.utils.errors import InputError


def test_fit_in_memory_and_spilled_both_select_the_samplers_coreset_and_spill_every_row(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(2, 160, 4, 4)).astype(np.float32) for _ in range(3)]
    patch_config = {"percentage": 0.25, "sampler": "approx_greedy_coreset", "anomaly_scorer_num_nn": 1}
    rows = np.concatenate([b.transpose(0, 2, 3, 1).reshape(-1, 160) for b in batches])
    from src.patchcore.sampling import build_sampler
    _, indices = build_sampler("approx_greedy_coreset", 0.25, 3).run(rows)   # the reference's order of draws
    expected = rows[indices]
    in_memory = HRPatchCore(patch_config, seed=3)
    stats = in_memory.fit(iter(batches), 3 * 2 * 16, str(tmp_path / "unused.f32"))
    assert not (tmp_path / "unused.f32").exists()
    monkeypatch.setattr(detector_module, "IN_MEMORY_BYTES", 0)   # every row to the spill file
    spilled = HRPatchCore(patch_config, seed=3)
    spill = tmp_path / "spill.f32"
    spilled_stats = spilled.fit(iter(batches), 3 * 2 * 16, str(spill))
    assert np.array_equal(np.fromfile(spill, np.float32).reshape(-1, 160), rows)
    for detector, fit_stats, was_spilled in ((in_memory, stats, False), (spilled, spilled_stats, True)):
        assert {k: fit_stats[k] for k in ("num_patches", "dimension", "bank_size", "spilled")} == \
            {"num_patches": 96, "dimension": 160, "bank_size": 24, "spilled": was_spilled}
        assert np.array_equal(detector.bank.index.reconstruct_n(0, len(detector.bank)), expected)


def test_streamed_fit_rejects_a_wrong_patch_count(tmp_path):
    detector = HRPatchCore({"percentage": 0.5, "sampler": "random", "anomaly_scorer_num_nn": 1})
    with pytest.raises(RuntimeError, match="announced"):
        detector.fit(iter([np.zeros((1, 8, 2, 2), np.float32)]), 5, str(tmp_path / "s.f32"))


def test_read_rows_returns_rows_in_the_requested_order(tmp_path):
    table = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    table.tofile(tmp_path / "t.f32")
    wanted = np.array([7, 3, 4, 5, 49, 0, 8])
    assert np.array_equal(read_rows(tmp_path / "t.f32", wanted, 3), table[wanted])


def test_memory_estimate_counts_projection_selection_and_bank(monkeypatch):
    config = {"percentage": 0.01, "sampler": "approx_greedy_coreset"}
    kept = estimate_fit_bytes(100_000, 384, config)   # 147 MiB of rows: kept in memory, counted in full
    assert kept["features"] == 100_000 * 384 * 4 and kept["selection"] > kept["features"] + kept["projected_features"]
    monkeypatch.setattr(detector_module, "IN_MEMORY_BYTES", 0)   # spilled: only the projected rows stay
    estimate = estimate_fit_bytes(100_000, 384, config)
    assert estimate["features"] == 0
    assert estimate["projected_features"] == 100_000 * 128 * 4
    assert estimate["bank"] == 1000 * 384 * 4
    # the greedy reorders the projected rows in place, 16 columns at a time (never a second full copy),
    # with 32 bytes of state per row
    assert estimate["projected_features"] + (16 * 4 + 32) * 100_000 <= estimate["selection"]
    assert estimate["selection"] < 1.5 * estimate["projected_features"]
    assert estimate["peak"] == max(estimate["selection"], 2 * estimate["bank"])


def test_scoring_without_a_set_of_sources_searches_the_bank_without_exactly_their_entries():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(8, 4)).astype(np.float32)
    sources = [0, 1, 2, 3, 0, 1, 2, 3]
    detector = HRPatchCore({"anomaly_scorer_num_nn": 2})
    detector.bank = MemoryBank.from_features(rows, {"sources": sources})
    rest = HRPatchCore({"anomaly_scorer_num_nn": 2})   # a bank of the other images' entries alone
    rest.bank = MemoryBank.from_features(rows[~np.isin(sources, (1, 3))])
    features = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
    scores = detector.patch_scores(features, (1, 3))
    np.testing.assert_allclose(scores, rest.patch_scores(features), rtol=1e-6)
    assert not np.allclose(scores, detector.patch_scores(features))
    assert detector.max_cell_weights(features, scores, 2, (1, 3)) == rest.max_cell_weights(features, scores, 2)
    np.testing.assert_allclose(detector.patch_scores(features, (2,)), detector.patch_scores(features, (2, 9)))
    assert list(detector._without) == [(2, 9)]   # one bank kept: the last set's
    with pytest.raises(InputError, match="every entry comes from the excluded training images"):
        detector.patch_scores(features, (0, 1, 2, 3))


def test_extend_appends_the_continuations_rows_with_their_sources_and_keeps_the_bank(tmp_path):
    rng = np.random.default_rng(1)
    patch_config = {"percentage": 0.25, "sampler": "approx_greedy_coreset", "anomaly_scorer_num_nn": 1}
    detector = HRPatchCore(patch_config, seed=2)
    trained = rng.normal(size=(4, 16, 4, 4)).astype(np.float32)
    detector.fit(iter([trained]), 64, str(tmp_path / "fit.f32"))
    detector.bank.metadata = {"sources": [int(row // 16) for row in detector.selected]}
    before = detector.bank.index.reconstruct_n(0, len(detector.bank))
    known = np.ascontiguousarray(before.reshape(1, 4, 4, 16).transpose(0, 3, 1, 2))   # the bank's own 16 rows
    new = np.concatenate([known, rng.normal(3, 1, size=(1, 16, 4, 4)).astype(np.float32)])
    stats = detector.extend(iter([new]), 32, str(tmp_path / "new.f32"), [7] * 16 + [8] * 16)
    after = detector.bank.index.reconstruct_n(0, len(detector.bank))
    assert np.array_equal(after[:len(before)], before) and stats["bank_size"] == len(after)
    added = after[len(before):]
    assert stats["added"] == len(added) > 0 and stats["method"] == "continued_greedy"
    sources = detector.metadata["sources"]
    assert len(sources) == len(after) and set(sources[len(before):]) == {8}   # the known image adds nothing
    rows = new[1].transpose(1, 2, 0).reshape(-1, 16)
    assert all(np.any(np.all(rows == row, axis=1)) for row in added)
    with pytest.raises(InputError, match="dimension 8"):
        detector.extend(iter([np.zeros((1, 8, 4, 4), np.float32)]), 16, str(tmp_path / "bad.f32"), [9] * 16)


def test_extend_refuses_more_new_patches_than_memory_holds(tmp_path, monkeypatch):
    from types import SimpleNamespace
    detector = HRPatchCore({"percentage": 0.5, "sampler": "approx_greedy_coreset", "anomaly_scorer_num_nn": 1})
    detector.fit(iter([np.ones((1, 8, 2, 2), np.float32)]), 4, str(tmp_path / "fit.f32"))
    monkeypatch.setattr(detector_module.psutil, "virtual_memory", lambda: SimpleNamespace(available=100))
    with pytest.raises(InputError, match="add fewer images at a time"):
        detector.extend(iter([np.ones((1, 8, 2, 2), np.float32)]), 4, str(tmp_path / "new.f32"), [1] * 4)
    assert not (tmp_path / "new.f32").exists() and len(detector.bank) == 2
