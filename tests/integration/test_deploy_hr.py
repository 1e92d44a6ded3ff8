"""Deployment of a high-resolution model: train.py (hr) -> export.py -> preprocess.py -> C++ runner per task ->
postprocess.py, against eval.py and Model.predict.

A small generated category (256x256 images), 128-pixel tiles with stride 96 (a 3x3 plan), two tasks
(NeighborhoodTaskGenerator 2x1: 6 and 3 tiles), a 64-pixel thumbnail branch and a validation set (so every
bank has a normaliser), mobilenet_v2 with seeded random weights and 64-dimensional features.
"""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
from conftest import ROOT, error_lines, python_command, read_json, run_command
from src.evaluation.metrics import METRIC_KEYS

CATEGORY = "synthetic_leather"
HR_COMMON = ["--config", ROOT / "configs" / "hr_patchcore.yaml", "-o", "hr.patch_size=128", "-o", "hr.stride=96",
             "-o", "percentage=0.1", "-o", "pretrain_embed_dimension=64", "-o", "target_embed_dimension=64",
             "-o", "hr.thumbnail={thumbnail_size: 64}",
             "-o", "hr.val_config={anomaly_syn_fn: [RandomBox], val_sample_ratio: 0.25}", "--workers", "1"]
HR = HR_COMMON + ["-o", "hr.task_generator=neighborhood",
                  "-o", "hr.task_generator_params={num_groups_width: 2, num_groups_height: 1}"]
ROUTED_FUSED = HR_COMMON + ["-o", "hr.task_generator=retrieve", "-o", "hr.task_generator_params={cluster_number: 2}",
                            "-o", "hr.ds_factors=[0, 1]", "-o", "hr.fusion_weights=[0.6, 0.4]"]
JOBS = ("task_0", "task_1", "thumbnail")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Dataset, a trained high-resolution model, its eval.py results and its export."""
    from src.data.synthetic import generate_category

    root = tmp_path_factory.mktemp("deploy_hr")
    generate_category(str(root / "data"), category=CATEGORY, texture="leather", image_size=(256, 256), n_train=8,
                      n_test_good=3, n_test_defect_per_type=1, defect_types=("scratch", "stain"), seed=0,
                      min_defect_px=3, max_defect_px=40)
    common = ["--dataset_path", root / "data", "--category", CATEGORY, "--output_dir", root / "out"]
    train = run_command(python_command("train.py", *common, *HR))
    assert train.returncode == 0, train.stderr
    category_dir = root / "out" / CATEGORY
    # eval.py and export.py at the same time: each mostly waits for MindSpore to start and compile.
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for command in (python_command("eval.py", *common),
                                 python_command("export.py", "--checkpoint_dir", category_dir))]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    return {"root": root, "data": root / "data", "category_dir": category_dir, "export": category_dir / "export",
            "eval": category_dir / "eval"}


@pytest.fixture(scope="module")
def cpp_run(project, runner):
    """scripts/run_infer_cpp.sh on the export: preprocessing, one runner run per task folder, postprocessing."""
    out = project["root"] / "infer"
    mindir = project["export"] / "patchcore_128x128_lite.mindir"
    # SAVE_FEATURES: the features too: the tests compare them with MindSpore's
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", mindir, project["data"], "y", CATEGORY,
                          "CPU", "0", out], SAVE_FEATURES="1")
    assert result.returncode == 0, result.stdout + result.stderr
    work = out / CATEGORY
    return {"result": result, "work": work, "inputs": work / "preprocess_Result", "results": work / "result_Files",
            "mindir": mindir}


@pytest.fixture(scope="module")
def python_model(project):
    """Model loaded from the export folder itself (it holds model.json, tasks.json and the banks)."""
    from src.app.cli import set_device
    from src.inference.model import Model
    set_device("CPU", 0)
    return Model.load(str(project["export"]))


def test_export_holds_a_model_per_input_size_the_task_map_and_every_sha256(project):
    from src.utils.io import sha256_of
    export = project["export"]
    meta = read_json(export / "export.json")
    model = read_json(project["category_dir"] / "model.json")
    assert model["category"] == meta["category"] == CATEGORY
    models = {tuple(m["roles"]): m for m in meta["models"]}
    assert set(models) == {("tile",), ("thumbnail",)}
    assert models[("tile",)]["input_shape"] == [1, 3, 128, 128] and models[("tile",)]["feature_grid"] == [16, 16]
    assert models[("thumbnail",)]["input_shape"] == [1, 3, 64, 64] and models[("thumbnail",)]["embed_dim"] == 64
    hr = meta["hr"]
    assert list(hr["tasks"]) == ["task_0", "task_1"] and [len(t["tiles"]) for t in hr["tasks"].values()] == [6, 3]
    for name in JOBS:
        job = hr["thumbnail"] if name == "thumbnail" else hr["tasks"][name]
        bank = read_json(project["category_dir"] / name / "bank.json")
        assert job["bank_file"] == f"{name}/faiss.index" and job["normalizer"] == bank["normalizer"] is not None
        assert job["num_nn"] == bank["patch_config"]["anomaly_scorer_num_nn"]
    assert hr["thumbnail"]["lite_mindir"] == models[("thumbnail",)]["lite_mindir"]
    assert hr["thumbnail"]["size"] == [64, 64]
    assert {k: hr[k] for k in ("gaussian_sigma", "image_score", "thumbnail_merge")} == {
        "gaussian_sigma": model["inference"]["gaussian_sigma"], "thumbnail_merge": "max",
        "image_score": model["image_score"]}
    assert model["image_score"] == {"policy": "window_max", "window": 8}   # one stride-8 feature cell
    assert hr["image_size"] == [256, 256] and hr["tile_plan"]["stride"] == [96, 96] and hr["eval_resize"] == 512
    assert meta["preprocess"] == {"view": {"name": "resize", "size": [256, 256]}, "image_size": [256, 256],
                                  **model["data"]}
    on_disk = sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file())
    assert sorted(meta["files"]) == sorted(set(on_disk) - {"export.json"})
    assert {f"{name}/faiss.index" for name in JOBS} <= set(meta["files"])
    for name, digest in meta["files"].items():
        assert sha256_of(export / name) == digest, name


def test_preprocess_writes_every_tile_per_task_and_the_thumbnail_normalised_as_in_training(project, cpp_run):
    from src.data.mvtec import list_test_samples
    from src.patchcore.featurizer import network_input
    from src.data.sample import HRSample
    from src.tiling.plan import TileIndex, WholeImage, crop

    manifest = read_json(cpp_run["inputs"] / "manifest.json")
    samples = list_test_samples(str(project["data"]), CATEGORY)
    assert len(manifest["items"]) == len(samples) == 5
    for name, count in zip(JOBS, (6, 3, 1)):
        files = sorted(p.name for p in (cpp_run["inputs"] / name).iterdir())
        listed = [os.path.basename(entry["file"]) for item in manifest["items"] for entry in item["inputs"]
                  if entry["task"] == name]
        assert files == listed == sorted(listed) and len(files) == count * len(samples)
    mean, std = manifest["preprocess"]["mean"], manifest["preprocess"]["std"]
    for item, sample in zip(manifest["items"], samples):
        assert os.path.join(manifest["dataset_path"], item["image"]) == os.path.abspath(sample.image_path)
        assert (item["label"], item["defect_type"]) == (sample.label, sample.defect_type)
        image = HRSample(sample.image_path).load_image()
        for entry in item["inputs"][::4]:
            expected = (WholeImage((64, 64)).views(image)[0] if entry["tile"] is None
                        else crop(image, TileIndex.from_dict(entry["tile"])))
            array = np.load(cpp_run["inputs"] / entry["file"])
            assert array.dtype == np.float32 and np.array_equal(array, network_input([expected], mean, std))


def test_run_infer_cpp_reports_eval_numbers_with_scores_computed_in_cpp(project, cpp_run):
    stdout = cpp_run["result"].stdout
    assert stdout.count("wrote ") >= 3 and all(f"result_Files/{name}" in stdout for name in JOBS)
    acc = read_json(cpp_run["work"] / f"acc_{CATEGORY}.json")
    assert acc["score_source"] == "cpp" and acc["latency"]["runs"] == 3 and acc["latency"]["inputs"] == 50
    latency = acc["latency"]   # each image's time, split: network and scoring in C++, then postprocess.py's own
    assert latency["network_ms"] > 0 and latency["scoring_ms"] > 0
    assert abs(latency["network_ms"] + latency["scoring_ms"] - latency["total_ms"]) < 1e-6 * latency["total_ms"]
    assert latency["openblas_cores"] and "none" not in latency["openblas_cores"]
    assert re.search(r"ms per image in C\+\+ \(network \d+ \+ scoring \d+\) on CPU, OpenBLAS \w+; postprocess "
                     r"\d+ ms per image \(stitching, maps, metrics\)", stdout)
    expected = read_json(project["eval"] / "metrics.json")
    assert acc["metrics"]["image_auroc"] == expected["image_auroc"]
    for key in METRIC_KEYS[1:]:
        assert abs(acc["metrics"][key] - expected[key]) <= 1e-4, key
    eval_scores = read_json(project["eval"] / "scores.json")
    assert [(s["path"], s["label"]) for s in acc["scores"]] == [(s["path"], s["label"]) for s in eval_scores]
    ours, theirs = (np.array([s["image_score"] for s in scores]) for scores in (acc["scores"], eval_scores))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=0)
    assert len(set(theirs.tolist())) == len(theirs)  # distinct scores: the AUROC check is not vacuous
    log_line = (cpp_run["work"] / f"acc_{CATEGORY}.log").read_text().splitlines()[0]
    assert log_line.startswith("img_auc: ") and log_line in stdout.splitlines()


def test_maps_and_features_match_hrmodel_predict(project, cpp_run, python_model):
    from src.deploy.package import load_export, load_manifest
    from src.deploy.outputs import anomaly_maps
    from src.data.sample import HRSample
    from src.tiling.plan import TileIndex

    meta = load_export(project["export"])
    _, items = load_manifest(cpp_run["inputs"] / "manifest.json")
    scores, maps, source = anomaly_maps(meta, str(project["export"]), str(cpp_run["results"]), items)
    assert source == "cpp"
    for (item, sample), score, amap in zip(items, scores, maps):
        image = HRSample(sample.image_path, image_size=python_model.image_size).load_image()
        expected_score, expected_map = python_model.predict(image)
        assert abs(score - expected_score) <= 1e-4 * expected_score
        assert amap.shape == expected_map.shape == (256, 256)
        np.testing.assert_allclose(amap, expected_map, rtol=1e-4, atol=1e-4 * float(expected_map.max()))
    # the runner's features of one tile against the featurizer's (same normalisation, same network)
    entry = items[3][0]["inputs"][7]
    index = TileIndex.from_dict(entry["tile"])
    image = HRSample(items[3][1].image_path).load_image()
    features, = python_model.featurizers[entry["task"]].view_batches([(image, index)])
    cpp = np.load(cpp_run["results"] / entry["file"].replace(".npy", "_0.npy"))
    scale = float(np.abs(features).max())
    assert scale > 0 and float(np.abs(cpp - features).max()) <= 1e-4 * scale


def box_union(regions, shape):
    covered = np.zeros(shape, bool)
    for region in regions:
        x, y, w, h = region["bbox"]
        covered[y:y + h, x:x + w] = True
    return covered


def test_the_cpp_path_decides_as_predict_py_and_pictures_every_ng(project, cpp_run, python_model, tmp_path):
    """postprocess.py's per-image decisions are predict.py's: the same label, normalised score and regions (up to
    the runner's ~1e-4 numerical difference at region edges), a region for every NG, a picture of every NG; and,
    at an image and a review threshold splitting the test images in three (the model's own may flag all of them),
    still the same, with a region and a picture for every NG and REVIEW image."""
    from src.deploy.outputs import evaluate
    from src.deploy.package import load_export, load_manifest
    from src.inference.predict import Predictor
    acc = read_json(cpp_run["work"] / f"acc_{CATEGORY}.json")
    paths = [project["data"] / CATEGORY / s["path"].split("/", 1)[1] for s in acc["scores"]]
    predictor = Predictor(python_model, str(project["export"]))

    def compare(predictions):
        expected = [p.to_dict() for p in predictor.predict(paths)]
        assert [p["input_path"] for p in predictions] == [e["input_path"] for e in expected] == [str(p) for p in paths]
        assert [p["label"] for p in predictions] == [e["label"] for e in expected]
        for ours, theirs in zip(predictions, expected):
            assert ours["model"] == theirs["model"] and ours["image_threshold"] == theirs["image_threshold"]
            assert ours["review_threshold"] == theirs["review_threshold"]
            assert abs(ours["image_score"] - theirs["image_score"]) <= 1e-4
            assert ours["label"] == "OK" or ours["regions"]
            ours_box, theirs_box = (box_union(p["regions"], (256, 256)) for p in (ours, theirs))
            union = (ours_box | theirs_box).sum()
            assert union == 0 or (ours_box & theirs_box).sum() >= 0.9 * union

    compare(acc["predictions"])
    pictures = sorted(path.name for path in (cpp_run["work"] / f"ng_{CATEGORY}").iterdir())
    assert pictures == sorted(f"{s['path'][:-4].replace('/', '__')}.png"   # e.g. synthetic_leather__test__good__001
                              for s, p in zip(acc["scores"], acc["predictions"]) if p["label"] == "NG")
    meta = load_export(project["export"])
    ranked = np.sort([s["image_score"] for s in acc["scores"]])
    # mid-gap, far from any score (Python and C++ cannot disagree on a tie): the widest gap of each half
    gaps, half = np.diff(ranked), len(ranked) // 2
    lower, upper = int(np.argmax(gaps[:half])), half + int(np.argmax(gaps[half:]))
    assert min(gaps[lower], gaps[upper]) > 1e-3 * ranked[-1]
    review, split = (float(ranked[gap] + ranked[gap + 1]) / 2 for gap in (lower, upper))
    meta["hr"]["thresholds"] = dict(meta["hr"]["thresholds"], image=split, review=review)
    predictor.rule.image_threshold, predictor.rule.review_threshold = split, review
    manifest, items = load_manifest(cpp_run["inputs"] / "manifest.json")
    (tmp_path / "ng").mkdir()
    (tmp_path / "ng" / "from_an_earlier_run.png").write_bytes(b"stale")
    _, _, predictions, _ = evaluate(meta, str(project["export"]), str(cpp_run["results"]), items,
                                    manifest["dataset_path"], str(tmp_path / "ng"))
    # every label occurs: the comparison is not vacuous
    assert {p["label"] for p in predictions} == {"OK", "REVIEW", "NG"}
    compare(predictions)
    # the folder holds this run's NG and REVIEW pictures only
    assert len(list((tmp_path / "ng").iterdir())) == sum(p["label"] != "OK" for p in predictions)


def test_python_scoring_of_runner_features_gives_the_same_scores(project, cpp_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(cpp_run["results"], results, ignore=shutil.ignore_patterns("*_scores.npy"))
    post = run_command(python_command("postprocess.py", "--export_dir", project["export"], "--result_path", results,
                                      "--manifest", cpp_run["inputs"] / "manifest.json", "--category", CATEGORY,
                                      "--output_dir", tmp_path))
    assert post.returncode == 0, post.stderr
    acc = read_json(tmp_path / f"acc_{CATEGORY}.json")
    cpp = read_json(cpp_run["work"] / f"acc_{CATEGORY}.json")
    assert acc["score_source"] == "python" and acc["metrics"]["image_auroc"] == cpp["metrics"]["image_auroc"]
    np.testing.assert_allclose([s["image_score"] for s in acc["scores"]],
                               [s["image_score"] for s in cpp["scores"]], rtol=1e-4, atol=0)
    (results / "task_1" / "0002_good_002_r001c002_0.npy").unlink()  # one task folder incomplete
    post = run_command(python_command("postprocess.py", "--export_dir", project["export"], "--result_path", results,
                                      "--manifest", cpp_run["inputs"] / "manifest.json", "--category", CATEGORY,
                                      "--output_dir", tmp_path))
    assert post.returncode == 2 and error_lines(post) == [
        f"error: {results / 'task_1' / '0002_good_002_r001c002_0.npy'}: runner output missing (did the runner "
        "process every input of the manifest?)"]


@pytest.fixture(scope="module")
def routed_fused(project, runner):
    """A RetrieveTaskGenerator model with multi-resolution fusion (ds_factors [0, 1]) on the same data: trained,
    evaluated, exported and run through run_infer_cpp.sh."""
    root = project["root"] / "routed_fused"
    common = ["--dataset_path", project["data"], "--category", CATEGORY, "--output_dir", root]
    for command in (python_command("train.py", *common, *ROUTED_FUSED), python_command("eval.py", *common),
                    python_command("export.py", "--checkpoint_dir", root / CATEGORY)):
        result = run_command(command)
        assert result.returncode == 0, result.stderr
    export = root / CATEGORY / "export"
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", export / "patchcore_128x128_lite.mindir",
                          project["data"], "y", CATEGORY, "CPU", "0", root / "infer"])
    assert result.returncode == 0, result.stdout + result.stderr
    work = root / "infer" / CATEGORY
    return {"category_dir": root / CATEGORY, "export": export, "result": result, "work": work,
            "inputs": work / "preprocess_Result"}


def test_routed_and_fused_model_exports_and_reproduces_eval(project, routed_fused):
    from src.deploy.package import scoring_jobs
    from src.patchcore.featurizer import relative_weights
    from src.tiling.tasks import load_tasks

    meta = read_json(routed_fused["export"] / "export.json")
    hr = meta["hr"]
    tasks, _ = load_tasks(routed_fused["category_dir"] / "tasks.json")
    assert hr["routed"] and all(task.center is not None for task in tasks) and len(tasks) == 2
    assert hr["fusion_weights"] == pytest.approx(relative_weights([0.6, 0.4]))
    assert [job["runner_scores"] for job in scoring_jobs(meta)] == [False, False, False]
    # every tile of every image went to exactly one task folder, with its coarser view beside it
    manifest = read_json(routed_fused["inputs"] / "manifest.json")
    for item in manifest["items"]:
        tiles = [entry for entry in item["inputs"] if entry["tile"] is not None]
        positions = sorted((entry["tile"]["row"], entry["tile"]["col"]) for entry in tiles)
        assert positions == [(row, col) for row in range(3) for col in range(3)]
        for entry in tiles:
            assert entry["file"].startswith(f"{entry['task']}/")
            assert entry["context_files"] == [entry["file"].replace(".npy", "_l1.npy")]
            assert (routed_fused["inputs"] / entry["context_files"][0]).is_file()
    # the runner computed features only; postprocess.py fused and scored them as eval.py does
    acc = read_json(routed_fused["work"] / f"acc_{CATEGORY}.json")
    assert acc["score_source"] == "python"
    assert not list((routed_fused["work"] / "result_Files").rglob("*_scores.npy"))
    expected = read_json(routed_fused["category_dir"] / "eval" / "metrics.json")
    assert acc["metrics"]["image_auroc"] == expected["image_auroc"]
    for key in METRIC_KEYS[1:]:
        assert abs(acc["metrics"][key] - expected[key]) <= 1e-4, key
    eval_scores = [s["image_score"] for s in read_json(routed_fused["category_dir"] / "eval" / "scores.json")]
    np.testing.assert_allclose([s["image_score"] for s in acc["scores"]], eval_scores, rtol=1e-4, atol=0)
    assert len(set(eval_scores)) == len(eval_scores)


def test_a_task_without_routed_tiles_is_skipped(routed_fused, project, tmp_path):
    """Every tile routed to task_1 (files and manifest moved): the runner skips the empty task_0 folder, and
    postprocess.py scores the images without it."""
    work = tmp_path / "out" / CATEGORY
    inputs = work / "preprocess_Result"
    shutil.copytree(routed_fused["inputs"], inputs)
    manifest = read_json(inputs / "manifest.json")

    def to_task_1(file):
        moved = file.replace("task_0/", "task_1/")
        (inputs / file).rename(inputs / moved)
        return moved

    for item in manifest["items"]:
        for entry in item["inputs"]:
            if entry["task"] == "task_0":
                entry.update(task="task_1", file=to_task_1(entry["file"]),
                             context_files=[to_task_1(file) for file in entry["context_files"]])
    (inputs / "manifest.json").write_text(json.dumps(manifest))
    assert not list((inputs / "task_0").iterdir())
    mindir = routed_fused["export"] / "patchcore_128x128_lite.mindir"
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", mindir, project["data"], "n", CATEGORY,
                          "CPU", "0", tmp_path / "out"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{inputs / 'task_0'}: no inputs (no tile was routed to this task), skipped" in result.stdout
    acc = read_json(work / f"acc_{CATEGORY}.json")
    assert acc["latency"]["runs"] == 2 and acc["latency"]["inputs"] == 5 * (9 * 2 + 1)
    assert not (work / "result_Files" / "task_0").exists()


def test_a_tile_of_the_wrong_shape_stops_the_runner_with_one_line(project, cpp_run, tmp_path):
    work = tmp_path / "out" / CATEGORY
    shutil.copytree(cpp_run["inputs"], work / "preprocess_Result")
    bad = work / "preprocess_Result" / "task_1" / "0001_good_001_r000c002.npy"
    np.save(bad, np.zeros((1, 3, 96, 128), np.float32))
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", cpp_run["mindir"], project["data"], "n",
                          CATEGORY, "CPU", "0", tmp_path / "out"])
    assert result.returncode != 0 and len(error_lines(result)) == 1, result.stderr
    assert str(bad) in error_lines(result)[0] and "shape (1, 3, 96, 128)" in error_lines(result)[0]
    assert not (work / f"acc_{CATEGORY}.json").exists()


def test_a_tampered_task_bank_is_refused_before_anything_runs(project, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(project["export"], export)
    with open(export / "task_1" / "faiss.index", "ab") as f:
        f.write(b"\0")
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", export / "patchcore_64x64_lite.mindir",
                          project["data"], "y", CATEGORY, "CPU", "0", tmp_path / "out"])
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert error_lines(result)[0] == f"error: {export / 'task_1' / 'faiss.index'}: sha256 differs from export.json: " \
                                     "the file was replaced or is damaged; run export.py again"
    assert not (tmp_path / "out" / CATEGORY / "preprocess_Result").exists()
