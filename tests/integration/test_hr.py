"""High-resolution mode: streamed per-task banks, workers, resume, inference, normalisation, CLI errors.

The end-to-end tests train once through train.py on a small generated category (256x256 images, 128-pixel
tiles with stride 64: a 3x3 plan, one task per tile, a thumbnail branch and a validation set) with seeded
random mobilenet_v2 weights, and reuse that model. The parts without a trained model are in
tests/unit/patchcore/ and tests/unit/training/.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import src  # noqa: F401
from conftest import ROOT, assert_one_line_error, bank_digests, digest, run_cli
from src.evaluation.metrics import DECISION_KEYS, METRIC_KEYS, OPERATING_KEYS, REVIEW_KEYS
from src.patchcore.detector import HRPatchCore
from src.patchcore.scoring import compose_anomaly_map
from src.training.hiad import HRTrainer
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.utils.errors import InputError

CATEGORY = "synthetic_leather"
SMALL = ["--config", os.path.join(ROOT, "configs", "hr_patchcore.yaml"), "-o", "hr.patch_size=128",
         "-o", "hr.stride=64", "-o", "percentage=0.1", "-o", "hr.task_generator=o2o",
         "-o", "hr.thumbnail={thumbnail_size: 64}",
         "-o", "hr.val_config={anomaly_syn_fn: [RandomBox], val_sample_ratio: 0.25}"]
JOBS = [f"task_{k}" for k in range(9)] + ["thumbnail"]


def common(dataset, out, seed=0):
    return ["--dataset_path", str(dataset), "--category", CATEGORY, "--output_dir", str(out), "--seed", str(seed)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from src.data.synthetic import generate_category
    root = tmp_path_factory.mktemp("data")
    generate_category(str(root), category=CATEGORY, texture="leather", image_size=(256, 256), n_train=8,
                      n_test_good=3, n_test_defect_per_type=1, defect_types=("scratch", "stain"), seed=0,
                      min_defect_px=3, max_defect_px=40)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run_cli("train.py", *common(dataset, out), *SMALL, "--workers", "1")
    assert result.returncode == 0, result.stderr
    return out / CATEGORY, result.stdout


# ------------------------------------------------------------------------------------------ end to end


def test_in_bank_validation_scores_are_the_models_own_scores_without_each_images_entries(dataset, tmp_path):
    """Training scores each validation image once (the jobs' stored grids, composed as Model.grids does); the
    recorded scores are what the trained model gives each image scored without its own bank entries."""
    from src.app.cli import set_device
    from src.inference.model import Model
    from src.data.mvtec import list_train_samples
    from src.data.sample import HRSample
    from src.training.validation import build_validation_set
    assert SMALL[-1].startswith("hr.val_config=")
    in_bank = SMALL[:-2] + [
        "-o", "hr.val_config={anomaly_syn_fn: [RandomBox], val_sample_ratio: 0, val_images: 3}",
        "-o", "hr.task_generator=neighborhood", "-o", "hr.task_generator_params={num_groups_width: 2, num_groups_height: 1}"]
    result = run_cli("train.py", *common(dataset, tmp_path), *in_bank, "--workers", "1")
    assert result.returncode == 0, result.stderr
    set_device("CPU", 0)
    model = Model.load(str(tmp_path / CATEGORY))
    records = model.meta["validation"]["items"]
    samples = [HRSample(s.image_path, image_size=(256, 256)) for s in list_train_samples(str(dataset), CATEGORY)]
    items = build_validation_set(samples, ["RandomBox"], 0, model.meta["seed"], 0.5, val_images=3).items
    assert [r["in_bank"] for r in records] == [True] * 6 and sorted(r["label"] for r in records) == [0, 0, 0, 1, 1, 1]
    online = [model.predict_images([item.load()[0]], item.excluded_sources)[0][0] for item in items]
    # to 5e-5: a tile reused from its normal twin was computed in another batch (MindSpore differs by ~1e-6 on the
    # AMD machines, 1.3e-5 on the Intel Xeon ones); the exclusion itself moves scores by over 1e-3 (below)
    np.testing.assert_allclose(online, [r["score"] for r in records], rtol=5e-5)
    full_bank = [model.predict_images([item.load()[0]])[0][0] for item in items]
    assert max(abs(a - b) for a, b in zip(online, full_bank)) > 1e-3   # the exclusion matters: not vacuous


def test_training_writes_one_verified_bank_per_task_tasks_json_logs_and_memory_report(trained):
    folder, stdout = trained
    from src.tiling.tasks import load_tasks
    tasks, plan = load_tasks(folder / "tasks.json")
    assert [t.name for t in tasks] == JOBS[:-1] and len(plan) == 9 and plan.stride == (64, 64)
    meta = json.loads((folder / "model.json").read_text())
    assert sorted(meta["jobs"]) == sorted(JOBS)
    for job in JOBS:
        detector = HRPatchCore.load(str(folder / job))         # sha256-verified
        assert detector.metadata["fingerprint"] == meta["jobs"][job]["fingerprint"]
        assert detector.metadata["validation_sha256"] == digest(folder / job / "validation.npz")
        assert len(detector.bank) == int(0.1 * meta["jobs"][job]["num_patches"])
    assert sorted(os.listdir(folder / "logs")) == sorted([f"{job}.log" for job in JOBS] + ["train.log"])
    assert "features: image 6 of 6" in (folder / "logs" / "task_4.log").read_text()   # 8 images, 2 held out
    assert not [name for name in os.listdir(folder) if name.startswith(".")]       # no staging left
    assert not any(name.endswith(".f32") for job in JOBS for name in os.listdir(folder / job))
    estimate_line = stdout.index("Memory estimate for")
    assert estimate_line < stdout.index("task_0 done") < stdout.index("Peak RSS")
    memory = meta["memory"]
    # Alone this run peaks at 1.04x its estimate; beside the suite's second test process (pytest-xdist) it holds more
    # (why is not yet known): 1.57x once and 2.20x twice, measured on the same 2-core machine.
    assert 0 < memory["peak_rss_bytes"] < 3 * memory["estimate_bytes"]
    assert "Task: task_0, Indexes: ['{\"main_index\": {\"x\": 0, \"y\": 0, \"width\": 128, \"height\": 128}" in stdout


def test_normalisers_are_persisted_and_validation_maps_equal_inference_maps(trained, dataset):
    folder, _ = trained
    from src.app.cli import set_device
    from src.data.mvtec import list_train_samples
    from src.inference.model import Model
    from src.patchcore.scoring import cell_labels
    from src.patchcore.normalization import ScoreNormalizer
    from src.data.sample import HRSample
    from src.training.validation import build_validation_set
    set_device("CPU", 0)
    model = Model.load(str(folder))
    meta = model.meta
    assert meta["thresholds"]["image_method"] == "max_f1" and meta["thresholds"]["pixel"] is not None
    # the same held-out images and synthetic defects as in training (seeded)
    samples = [HRSample(s.image_path, image_size=(256, 256)) for s in list_train_samples(str(dataset), CATEGORY)]
    items = build_validation_set(samples, ["RandomBox"], 0.25, meta["seed"], 0.5).items
    records = meta["validation"]["items"]
    assert [item.describe() for item in items] == [{k: v for k, v in r.items() if k != "score"} for r in records]
    assert sorted(item.label for item in items) == [0, 1]
    loaded = [item.load() for item in items]
    # each recorded raw score is the model's own score of that validation image (held out: nothing excluded)
    scores = [score for score, _ in model.predict_images([image for image, _ in loaded])]
    # to 5e-6: the validation pass batched other images with these (1.1e-6 apart on the Intel Xeon machines)
    np.testing.assert_allclose(scores, [r["score"] for r in records], rtol=5e-6)
    by_position = {(index.row, index.col): index for index in model.indexes}
    stored = {}
    for job in JOBS:
        detector = model.detectors[job]
        with np.load(folder / job / "validation.npz") as data:
            grids, item_ids, rows, cols = data["grids"], data["items"], data["rows"], data["cols"]
        # bank.json's normaliser is exactly the one fitted on these raw scores: defect cells as anomalies
        labels = []
        for item, row, col in zip(item_ids, rows, cols):
            mask = loaded[item][1]
            if row >= 0:
                box = by_position[(int(row), int(col))].main_index
                mask = mask[box.y:box.y + box.height, box.x:box.x + box.width]
            labels.append(cell_labels(mask, grids.shape[1:]))
        labels = np.stack(labels)
        refit = ScoreNormalizer.fit_grids(grids, labels)
        assert detector.normalizer == refit
        assert json.loads((folder / job / "bank.json").read_text())["normalizer"] == refit.to_dict()
        for grid, item, row, col in zip(grids, item_ids, rows, cols):
            stored[(int(item), int(row), int(col))] = detector.normalize(grid)
    # online (inference on the validation image) == offline (stored validation scores, normalised)
    anomalous = [k for k, item in enumerate(items) if item.label == 1][0]
    (tile_grids, thumbnail, _), = model.grids([loaded[anomalous][0]])
    for index, grid in tile_grids:
        np.testing.assert_allclose(grid, stored[(anomalous, index.row, index.col)], atol=1e-6)
    np.testing.assert_allclose(thumbnail, stored[(anomalous, -1, -1)], atol=1e-6)
    assert all(0 < grid.min() and grid.max() < 1 for _, grid in tile_grids)


def border_step_ratio(amap, borders=(64, 128, 192)):
    """Mean, over the tile borders and both axes, of the map's mean absolute step across the border divided
    by the median step between other neighbouring rows/columns: about 1 without seams."""
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(amap, axis=axis)).mean(axis=1 - axis)
        at = [b - 1 for b in borders]
        ratios.extend(steps[at] / np.median(np.delete(steps, at)))
    return float(np.mean(ratios))


def test_no_seams_on_normal_images(trained, dataset):
    # Nine tasks, each with its own bank and normaliser, meet at the borders of a 3x3 plan with overlap.
    # Checked before the final gaussian, which would smooth a seam into a ramp.
    from src.app.cli import set_device
    from src.inference.model import Model
    from src.patchcore.scoring import tile_map
    from src.data.sample import HRSample
    from src.tiling.stitching import stitch
    folder, _ = trained
    set_device("CPU", 0)
    model = Model.load(str(folder))
    blended, averaged = [], []
    for path in sorted((dataset / CATEGORY / "test" / "good").iterdir()):
        (grids, thumbnail, _), = model.grids([HRSample(str(path)).load_image()])
        blended.append(border_step_ratio(compose_anomaly_map(grids, (256, 256), thumbnail, sigma=0)))
        # the check can fail: the same tile maps averaged without a window (weights jump where a tile starts)
        plain = stitch([tile_map(g, i.main_index) for i, g in grids], [i for i, _ in grids], (256, 256), "mean")
        averaged.append(border_step_ratio(plain))
    assert np.mean(blended) < 2.5 and np.mean(averaged) > 4.0, (blended, averaged)


@pytest.fixture(scope="module")
def evaluated(trained, dataset):
    folder, _ = trained
    result = run_cli("eval.py", *common(dataset, folder.parent))
    assert result.returncode == 0, result.stderr
    return folder / "eval", result.stdout


def test_eval_prints_the_table_and_writes_results_and_pictures(evaluated):
    evaluation, stdout = evaluated
    lines = stdout.strip().splitlines()
    header = [k for k, line in enumerate(lines) if "clsname" in line][0]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[header:header + 4]]
    # the rankings, the operating points, then the decisions at threshold and what the review band does
    assert cells[0] == ["clsname", *METRIC_KEYS, *OPERATING_KEYS, "worst_margin", *DECISION_KEYS, *REVIEW_KEYS]
    assert cells[2][0] == CATEGORY and cells[3][0] == "mean" and cells[2][1:] == cells[3][1:]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    # 3 good and 2 defective test images: too few for any rate, said under the table; the margins are there
    assert all(metrics[key] is None for key in OPERATING_KEYS) and "3 good and 2 defective: n/a" in stdout
    margins = metrics["margin_per_defect_type"]
    assert set(margins) == {"scratch", "stain"} and metrics["worst_margin"] == min(margins.values())
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0
    assert cells[2][2] == f"{metrics['pixel_auroc']:g}"
    scores = json.loads((evaluation / "scores.json").read_text())
    assert [s["defect_type"] for s in scores] == ["good"] * 3 + ["scratch", "stain"]
    assert all(isinstance(s["predicted_anomalous"], bool) for s in scores)
    assert all((s["decision"] == "NG") == s["predicted_anomalous"] and s["decision"] in ("OK", "REVIEW", "NG")
               for s in scores)
    results = json.loads((evaluation / "results.json").read_text())
    assert results["mean"]["pixel_auroc"] == metrics["pixel_auroc"]
    assert (evaluation / "results.md").read_text() == (evaluation / "metrics.md").read_text()
    assert sorted(os.listdir(evaluation / "vis")) == ["good_000.png", "good_001.png", "good_002.png",
                                                      "scratch_000.png", "stain_000.png"]


def test_return_results_only_gives_scores_and_full_resolution_maps(trained, evaluated, dataset, tmp_path):
    folder, _ = trained
    from src.data.sample import HRSample
    trainer = HRTrainer.from_checkpoint(str(folder), log_root=str(tmp_path / "logs"), vis_root=str(tmp_path / "vis"))
    paths = sorted((dataset / CATEGORY / "test" / "good").iterdir())
    samples = [HRSample(str(p), image_size=256) for p in paths]
    scores, maps = trainer.inference(samples, return_results_only=True)
    assert scores.shape == (3,) and len(maps) == 3
    assert all(m.shape == (256, 256) and m.dtype == np.float32 for m in maps)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "vis").exists()
    cli_scores = json.loads((evaluated[0] / "scores.json").read_text())
    # faiss's multithreaded search rounds a distance by ~1e-7 differently depending on which queries share its
    # block (eval.py batches other images' tiles with these); the score normaliser amplifies that to ~1e-6
    np.testing.assert_allclose(scores, [s["image_score"] for s in cli_scores[:3]], rtol=1e-5)
    seen = {}

    def evaluator(prediction_scores, gt_labels, prediction_masks, gt_masks, **kwargs):  # HiAD's signature
        seen.update(n=len(prediction_scores), labels=list(gt_labels), shape=prediction_masks[0].shape,
                    masks=[int(m.sum()) for m in gt_masks])
        return {"my_metric": 0.5}
    results = trainer.inference(samples, evaluators=[evaluator], clsname="demo")
    assert seen == {"n": 3, "labels": [0, 0, 0], "shape": (256, 256), "masks": [0, 0, 0]}
    assert results["metrics"] == {"my_metric": 0.5}
    assert [c.strip() for c in results["table"].splitlines()[2].split("|")[1:-1]] == ["demo", "0.5"]
    assert (tmp_path / "logs" / "results.md").is_file() and len(os.listdir(tmp_path / "vis")) == 3


def test_resume_after_kill_gives_identical_banks(trained, dataset, tmp_path):
    # killed while training in one process; resumed with two worker processes; compared with the fixture's
    # uninterrupted single-process run
    folder, _ = trained
    out = tmp_path / "out"
    args = [sys.executable, os.path.join(ROOT, "train.py"), *common(dataset, out), *SMALL, "--workers", "1"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    target = out / CATEGORY
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if target.is_dir() and any((target / job / "bank.json").is_file() for job in JOBS):
                break
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)   # the train.py process group (its own session)
        process.wait()
    finished = [job for job in JOBS if (target / job / "bank.json").is_file()]
    assert 1 <= len(finished) < len(JOBS) and not (target / "model.json").exists()
    result = run_cli("train.py", *common(dataset, out), *SMALL, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"Resuming: {len(finished)} of {len(JOBS)} banks are complete and verified" in result.stdout
    assert "Worker 1:" in result.stdout
    for job in finished:
        assert f"{job} done" not in result.stdout
    assert bank_digests(target, JOBS) == bank_digests(folder, JOBS)   # = the uninterrupted single-worker run
    assert not [name for name in os.listdir(target) if name.startswith(".")]


def test_an_injected_runner_gets_each_jobs_needs_and_its_workers_write_nothing_into_the_model(dataset, tmp_path):
    """A runner that runs every job with scratch space of its own, as a remote worker would, and hands the results
    back: the trainer writes the same banks, byte for byte, as with the default local runner."""
    import dataclasses
    from src.data.sample import HRSample
    from src.tiling.tasks import O2OTaskGenerator
    from src.training.jobs import run_jobs
    train = [HRSample(str(p), image_size=256) for p in sorted((dataset / CATEGORY / "train" / "good").iterdir())]
    plan = MultiResolutionHRImageSpliter(256, 128)
    config = {"patch": {"backbone_name": "mobilenet_v2", "layers_to_extract_from": ["features.6", "features.13"],
                        "percentage": 0.1, "pretrain_embed_dimension": 64, "target_embed_dimension": 64},
              "thumbnail": {"thumbnail_size": 64, "merge": "max"}}

    class RemoteLike:
        def __init__(self):
            self.needs, self.model = None, None

        def run(self, run, needs, report, say):
            self.needs = needs
            for name in sorted(needs):
                before = sorted(os.listdir(self.model))
                results = []
                run_jobs(dataclasses.replace(run, scratch_root=str(tmp_path / "worker")), [name],
                         lambda *message: results.append(message))
                assert sorted(os.listdir(self.model)) == before, name   # the job wrote nothing there
                for message in results:
                    report(*message)
            return [0]

    runner, digests = RemoteLike(), {}
    val_config = {"anomaly_syn_fn": ["RandomBox"], "val_sample_ratio": 0.25}
    for label in ("local", "injected"):
        folder = tmp_path / label
        os.makedirs(folder)
        runner.model = folder
        trainer = HRTrainer(batch_size=4, tasks=O2OTaskGenerator().create_tasks(train, plan), config=config,
                            checkpoint_root=str(folder), log_root=str(tmp_path / label / "logs"), vis_root=None)
        trainer.train(train, val_config=val_config, pre_ckpt_path=None, seed=0,
                      runner=runner if label == "injected" else None)
        digests[label] = bank_digests(folder, [f"task_{k}" for k in range(4)] + ["thumbnail"])
    assert digests["injected"] == digests["local"]
    assert sorted(runner.needs) == [f"task_{k}" for k in range(4)] + ["thumbnail"]
    assert all(need.cost > 0 and need.memory > 2 ** 20 for need in runner.needs.values())
    with pytest.raises(InputError, match="workers"):
        HRTrainer(batch_size=4, tasks=O2OTaskGenerator().create_tasks(train, plan), config=config,
                  checkpoint_root=str(tmp_path / "x")).train(train, workers=2, val_config=val_config, runner=runner)


def test_api_retrieve_tasks_with_multi_resolution_fusion_train_and_route(dataset, tmp_path):
    from src.data.sample import HRSample
    from src.tiling.tasks import RetrieveTaskGenerator
    train = [HRSample(str(p), image_size=256) for p in sorted((dataset / CATEGORY / "train" / "good").iterdir())]
    plan = MultiResolutionHRImageSpliter(256, 128, ds_factors=[0, 1])
    generator = RetrieveTaskGenerator(cluster_number=2, fusion_weights=[0.5, 0.5])
    tasks = generator.create_tasks(train, plan)
    trainer = HRTrainer(batch_size=4, tasks=tasks, config={"patch": {"backbone_name": "mobilenet_v2",
                        "layers_to_extract_from": ["features.6", "features.13"], "percentage": 0.1,
                        "pretrain_embed_dimension": 64, "target_embed_dimension": 64, "patch_size": 128}},
                        fusion_weights=[0.5, 0.5], checkpoint_root=str(tmp_path / "ckpt"),
                        log_root=str(tmp_path / "logs"))
    summary = trainer.train(train, workers=1, val_config={"anomaly_syn_fn": ["CutPaste"], "val_sample_ratio": 0.25},
                            task_generator=generator)
    assert sorted(summary["jobs"]) == ["task_0", "task_1"] and summary["thresholds"] is not None
    images = [HRSample(str(p), image_size=256) for p in sorted((dataset / CATEGORY / "test" / "stain").iterdir())]
    scores, maps = trainer.inference(images, return_results_only=True)
    assert scores.shape == (1,) and maps[0].shape == (256, 256) and np.isfinite(maps[0]).all()
    model = trainer.load_model()
    routed = model.assignment(images[0].load_image())
    assert sorted(i.row * 2 + i.col for _, tiles in routed for i in tiles) == [0, 1, 2, 3]  # each tile once


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["corrupt_image", "patch_too_large", "fusion_weights", "unknown_generator"])
def test_bad_input_is_one_line_error_and_leaves_no_checkpoint(dataset, tmp_path, case):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    extra, needle = [], None
    if case == "corrupt_image":
        victim = data / CATEGORY / "train" / "good" / "005.png"
        victim.write_bytes(victim.read_bytes()[:300])
        needle = str(victim)
    elif case == "patch_too_large":
        extra, needle = ["-o", "hr.patch_size=300"], "larger than image_size"
    elif case == "fusion_weights":
        extra, needle = ["-o", "hr.ds_factors=[0, 1]", "-o", "hr.fusion_weights=[1.0]"], "1 weights for 2"
    else:
        extra, needle = ["-o", "hr.task_generator=SquareTaskGenerator"], "unknown task generator"
    out = tmp_path / "out"
    result = run_cli("train.py", *common(data, out), *SMALL, *extra)
    assert_one_line_error(result, needle)
    assert not out.exists() or os.listdir(out) == []


def test_mask_of_wrong_size_fails_eval_cleanly(trained, dataset, tmp_path):
    import cv2
    folder, _ = trained
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    mask = data / CATEGORY / "ground_truth" / "stain" / "000_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    out = tmp_path / "out"
    shutil.copytree(folder, out / CATEGORY)
    shutil.rmtree(out / CATEGORY / "eval", ignore_errors=True)
    result = run_cli("eval.py", *common(data, out))
    assert_one_line_error(result, str(mask))
    assert not (out / CATEGORY / "eval").exists()
    assert not [name for name in os.listdir(out / CATEGORY) if name.startswith(".")]


def test_predict_a_tiled_model_gives_evals_scores_json_and_pictures(trained, evaluated, dataset, tmp_path):
    folder, _ = trained
    evaluation, _ = evaluated
    result = run_cli("predict.py", "--model_dir", str(folder), "--input", str(dataset / CATEGORY / "test"),
                     "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    names = ["good__000", "good__001", "good__002", "scratch__000", "stain__000"]
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == names
    by_path = {s["path"]: s["image_score"] for s in json.loads((evaluation / "scores.json").read_text())}
    for name in names:
        fields = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        relative = os.path.relpath(fields["input_path"], dataset)
        assert abs(fields["raw_score"] - by_path[relative]) <= 1e-6 * abs(by_path[relative])
        assert fields["image_size"] == fields["map_size"] == [256, 256]
        assert (fields["label"] == "NG") == (fields["raw_score"] >= fields["image_threshold"])
        assert (fields["image_score"] >= 0.5) == (fields["label"] == "NG")
    assert "5 images:" in result.stdout
