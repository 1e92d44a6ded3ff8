"""High-resolution mode, the parts without a trained model: streamed fit, memory estimate, scheduling, context
features, map composition, image score, fusion weights (the end-to-end tests are in tests/integration/test_hr.py).
"""
import dataclasses
import os

import numpy as np
import pytest

import src  # noqa: F401
from src.utils.errors import InputError
from src.patchcore import detector as detector_module
from src.patchcore.detector import HRPatchCore, estimate_fit_bytes, read_rows
from src.patchcore.featurizer import context_features
from src.patchcore.scoring import build_image_score, compose_anomaly_map
from src.training.runner import schedule
from src.training.hiad import HRTrainer
from src.tiling.tasks import A2OTaskGenerator
from src.tiling.plan import Box, MultiResolutionHRImageSpliter


# ------------------------------------------------------------------------------------------ units


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


def test_schedule_balances_cost_largest_first_not_round_robin():
    costs = {"a": 8, "b": 7, "c": 6, "d": 5, "e": 4, "f": 1}
    plan = schedule(costs, 2)
    assert plan == [["a", "d", "e"], ["b", "c", "f"]]   # loads 17 and 14; round robin would give 18 and 13
    assert schedule({"a": 1}, 3) == [["a"]]


def test_a_job_result_lands_whole_only_when_every_file_matches_its_sha256(tmp_path):
    from src.training.jobs import JobResult
    built = tmp_path / "worker"
    built.mkdir()
    (built / "faiss.index").write_bytes(b"index bytes")
    (built / "bank.json").write_text("{}")
    result = JobResult.collect("task_0", built, {"bank_size": 1})
    root = tmp_path / "model"
    result.write(root)
    assert sorted(os.listdir(root / "task_0")) == ["bank.json", "faiss.index"]
    assert (root / "task_0" / "faiss.index").read_bytes() == b"index bytes"
    damaged = dataclasses.replace(result, files={**result.files, "faiss.index": b"index bytez"})
    with pytest.raises(RuntimeError, match="task_0/faiss.index"):
        damaged.write(root)
    assert (root / "task_0" / "faiss.index").read_bytes() == b"index bytes"   # the earlier bank stays
    assert not [name for name in os.listdir(root) if name.startswith(".")]


def test_runners_are_chosen_by_name():
    from src.training.runner import LocalRunner, build_runner
    runner = build_runner("local", workers=2)
    assert isinstance(runner, LocalRunner) and runner.workers == 2
    with pytest.raises(InputError, match="runner.backend.*unknown backend 'cluster'.*known: local, ray"):
        build_runner("cluster")
    with pytest.raises(InputError, match="workers"):
        build_runner("local", workers=0)


def test_a_ray_task_asks_for_its_jobs_memory_and_one_device_of_the_target():
    from src.training.ray_runner import task_options
    from src.training.memory import JobNeeds
    need = JobNeeds(cost=1e6, memory=3 * 2 ** 30)
    cpu = task_options(need, "CPU", 2, 3)
    assert cpu == {"num_cpus": 2, "memory": 3 * 2 ** 30, "max_retries": 3, "retry_exceptions": False}
    assert task_options(need, "Ascend", 1, 2)["resources"] == {"NPU": 1}
    assert task_options(need, "GPU", 1, 2)["num_gpus"] == 1 and "resources" not in task_options(need, "GPU", 1, 2)
    assert task_options(need, "Ascend", 1, 2, {"bank_slot": 1})["resources"] == {"bank_slot": 1, "NPU": 1}


@pytest.mark.parametrize("resources", [{"CPU": 1}, {"bank_slot": 0}, {"bank_slot": True}, ["bank_slot"]])
def test_custom_ray_resources_must_be_names_with_positive_amounts(resources):
    from src.training.ray_runner import check_resources
    assert check_resources({"bank_slot": 1, "big_memory": 0.5}) == {"bank_slot": 1, "big_memory": 0.5}
    with pytest.raises(InputError, match="runner.resources"):
        check_resources(resources)


def test_context_features_cut_the_tile_out_of_the_coarser_map():
    # A feature map linear in x and y (one channel per axis) over a 64x64 region: the part over a 32x32 tile
    # at (32, 0) resized to 4x4 cells must be the ramp sampled at the tile's own cell centres.
    gh = gw = 8
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
    features = np.stack([xs, ys])                        # cell (i, j) centre at pixel (8 j + 4, 8 i + 4)
    out = context_features(features, Box(0, 0, 64, 64), Box(32, 0, 32, 32), (4, 4))
    centres = (np.arange(4) + 0.5) * 8                   # tile cell centres in tile pixels
    assert np.allclose(out[0], ((32 + centres) / 8 - 0.5)[None, :].repeat(4, 0))
    assert np.allclose(out[1], (centres / 8 - 0.5)[:, None].repeat(4, 1).clip(0))


def test_compose_stitches_merges_and_smooths_once():
    import cv2
    plan = MultiResolutionHRImageSpliter(64, 32, 16)
    grids = [(index, np.full((4, 4), 0.25, np.float32)) for index in plan]
    assert np.allclose(compose_anomaly_map(grids, (64, 64), None, sigma=4.0), 0.25)
    thumbnail = np.zeros((2, 2), np.float32)
    thumbnail[0, 0] = 1.0
    upsampled = cv2.resize(thumbnail, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(compose_anomaly_map(grids, (64, 64), thumbnail, merge="max", sigma=0),
                       np.maximum(0.25, upsampled))
    assert np.allclose(compose_anomaly_map(grids, (64, 64), thumbnail, merge="mean", sigma=0), (0.25 + upsampled) / 2)


def test_image_score_dilutes_a_single_pixel_but_not_a_cell_sized_defect():
    spike = np.zeros((64, 64), np.float32)
    spike[10, 10] = 1.0
    blob = np.zeros((64, 64), np.float32)
    blob[30:38, 30:38] = 1.0
    assert build_image_score({"policy": "window_max", "window": 8})(spike, []) == pytest.approx(1 / 64)
    assert build_image_score({"policy": "window_max", "window": 8})(blob, []) == pytest.approx(1.0)
    assert build_image_score({"policy": "window_max", "window": 1})(spike, []) == 1.0


class FakeExtractor:
    """Stands in for the network: the normalised input sampled every 8 pixels (a [B, 3, H/8, W/8] grid)."""

    def __call__(self, images):
        import mindspore as ms
        return ms.Tensor(images.asnumpy()[:, :, 4::8, 4::8].copy())


def test_fusion_weights_the_tile_and_its_context_and_keeps_the_scale():
    from src.patchcore.featurizer import Featurizer
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)
    plan = MultiResolutionHRImageSpliter(128, 32, ds_factors=[0, 1])

    def features(weights):
        featurizer = Featurizer(FakeExtractor(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4, weights)
        return np.concatenate(list(featurizer.view_batches([(image, index) for index in plan])))
    tile_only, context_only = features([1.0, 0.0]), features([0.0, 1.0])
    assert np.array_equal(tile_only, features(None))
    assert not np.allclose(tile_only, context_only)
    np.testing.assert_allclose(features([1.0, 1.0]), (tile_only + context_only) / 2, rtol=1e-6)
    np.testing.assert_allclose(features([3.0, 1.0]), 0.75 * tile_only + 0.25 * context_only, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features([2.0, 2.0]), features([0.5, 0.5]), rtol=1e-6)


@pytest.mark.parametrize("weights, message", [([1.0], "2 resolutions"), ([1.0, -1.0], "non-negative"),
                                              ([0.0, 0.0], "positive sum"), (None, "need one fusion weight")])
def test_fusion_weights_are_validated(weights, message):
    plan = MultiResolutionHRImageSpliter(256, 64, ds_factors=[0, 1])
    tasks = A2OTaskGenerator().create_tasks([], plan)
    with pytest.raises(InputError, match=message):
        HRTrainer(tasks=tasks, fusion_weights=weights)
    with pytest.raises(InputError, match="1 resolutions"):
        HRTrainer(tasks=A2OTaskGenerator().create_tasks([], MultiResolutionHRImageSpliter(256, 64)),
                  fusion_weights=[0.5, 0.5])
