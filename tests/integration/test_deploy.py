"""Deployment path: train.py -> export.py -> preprocess.py -> C++ runner -> postprocess.py, against eval.py.

A tiny generated category (72 px images, 64 px crops) and a MobileNetV2 backbone whose seeded random
weights are saved as a checkpoint, so the backbone-checkpoint checks are exercised too.
"""
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
from conftest import ROOT, one_error_line, python_command, read_json, run_command
from src.evaluation.metrics import METRIC_KEYS

CATEGORY = "synthetic_leather"
SMALL = ["-o", "resize=72", "-o", "imagesize=64", "-o", "batch_size=4", "-o", "percentage=0.25",
         "-o", "backbone_name=mobilenet_v2", "-o", "layers_to_extract_from=[features.6,features.13]"]


def run_concurrently(*commands):
    """Independent commands at the same time (each mostly waits for MindSpore to start and compile)."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for command in commands]
    return [(process.wait(timeout=600), *process.communicate()) for process in processes]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Dataset, backbone checkpoints, a trained category with eval.py results and an export."""
    import mindspore as ms
    from src.backbones.networks import build_backbone
    from src.data.synthetic import generate_category

    root = tmp_path_factory.mktemp("deploy")
    generate_category(str(root / "data"), category=CATEGORY, texture="leather", image_size=(72, 72), n_train=6,
                      n_test_good=4, n_test_defect_per_type=3, defect_types=("scratch", "stain"), seed=0)
    ckpts = {}
    for name, seed in (("trained", 1), ("other", 2)):
        ckpts[name] = root / f"mobilenet_seed{seed}.ckpt"
        ms.save_checkpoint(build_backbone("mobilenet_v2", ["features.6", "features.13"], seed=seed), str(ckpts[name]))
    common = ["--dataset_path", root / "data", "--category", CATEGORY, "--output_dir", root / "out"]
    train = run_command(python_command("train.py", *common, "--pre_ckpt_path", ckpts["trained"], *SMALL))
    assert train.returncode == 0, train.stderr
    category_dir = root / "out" / CATEGORY
    for code, _, stderr in run_concurrently(
            python_command("eval.py", *common, "--pre_ckpt_path", ckpts["trained"]),
            python_command("export.py", "--checkpoint_dir", category_dir, "--ckpt_file", ckpts["trained"])):
        assert code == 0, stderr
    return {"root": root, "data": root / "data", "ckpts": ckpts, "category_dir": category_dir,
            "export": category_dir / "export", "eval": category_dir / "eval"}


@pytest.fixture(scope="module")
def cpp_run(project, runner):
    """scripts/run_infer_cpp.sh on the export (preprocessing included, C++ scoring)."""
    out = project["root"] / "infer"
    mindir = project["export"] / read_json(project["export"] / "export.json")["models"][0]["mindir"]
    # SAVE_FEATURES: the features too: the tests compare them with MindSpore's
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", mindir, project["data"], "y", CATEGORY,
                          "CPU", "0", out], SAVE_FEATURES="1")
    assert result.returncode == 0, result.stdout + result.stderr
    return {"result": result, "work": out / CATEGORY, "mindir": mindir}


def assert_matches_eval(acc, eval_dir):
    """Same image AUROC as eval.py, every image score within 1e-4 relative, pixel metrics within 1e-4."""
    expected = read_json(eval_dir / "metrics.json")
    assert acc["metrics"]["image_auroc"] == expected["image_auroc"]
    for key in METRIC_KEYS[1:]:
        assert abs(acc["metrics"][key] - expected[key]) <= 1e-4, key
    eval_scores = read_json(eval_dir / "scores.json")
    assert [s["path"] for s in acc["scores"]] == [s["path"] for s in eval_scores]
    assert [s["label"] for s in acc["scores"]] == [s["label"] for s in eval_scores]
    ours = np.array([s["image_score"] for s in acc["scores"]])
    theirs = np.array([s["image_score"] for s in eval_scores])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=0)
    assert len(set(theirs.tolist())) == len(theirs)  # distinct scores: the AUROC check is not vacuous


def test_export_records_shapes_settings_and_the_sha256_of_every_file(project):
    from src.deploy.export import export_files
    from src.utils.io import sha256_of
    export = project["export"]
    meta = read_json(export / "export.json")
    trained = read_json(project["category_dir"] / "model.json")
    bank = read_json(project["category_dir"] / "task_0" / "bank.json")
    (model,) = meta["models"]
    assert model["input_shape"] == [1, 3, 64, 64] and model["input_dtype"] == "float32"
    assert model["output_shape"] == [1, 1024, 8, 8] and model["feature_grid"] == [8, 8]
    assert model["embed_dim"] == bank["dimension"]
    data = trained["config"]["data"]
    assert meta["preprocess"] == {"view": {"name": "resize_crop", "resize": data["resize"], "crop": data["imagesize"]},
                                  "image_size": [64, 64], "mean": data["mean"], "std": data["std"]}
    (task,) = meta["hr"]["tasks"].values()   # a 224-pixel model (here 64) is one tile, one task
    assert task["num_nn"] == bank["patch_config"]["anomaly_scorer_num_nn"] and task["runner_scores"] is True
    assert meta["hr"]["gaussian_sigma"] == trained["config"]["postprocess"]["gaussian_sigma"]
    assert meta["hr"]["image_score"] == {"policy": "max"} and meta["hr"]["eval_resize"] is None
    assert meta["files"]["task_0/faiss.index"] == bank["index_sha256"]
    assert sorted(meta["files"]) == [name for name in export_files(export) if name != "export.json"]
    for name, digest in meta["files"].items():
        assert sha256_of(export / name) == digest, name
    for name in export_files(export):  # mindspore.export writes 0400; users must be able to replace files
        assert os.stat(export / name).st_mode & stat.S_IWUSR, name
    assert [name for name in os.listdir(project["category_dir"]) if name.startswith(".")] == []


def test_mindspore_loads_the_original_model_and_it_equals_the_network(project, cpp_run):
    import mindspore as ms
    from mindspore import nn
    from src.patchcore.extractor import build_extractor

    meta = read_json(project["export"] / "export.json")
    x = np.load(cpp_run["work"] / "preprocess_Result" / "task_0" / "0000_good_000_r000c000.npy")
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        loaded = nn.GraphCell(ms.load(str(project["export"] / meta["models"][0]["mindir"])))(ms.Tensor(x)).asnumpy()
        extractor, _ = build_extractor(meta["config"]["patch"], str(project["ckpts"]["trained"]))
        direct = extractor(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=previous)
    assert list(loaded.shape) == meta["models"][0]["output_shape"]
    scale = float(np.abs(direct).max())
    assert scale > 0 and float(np.abs(loaded - direct).max()) <= 1e-6 * scale
    cpp = np.load(cpp_run["work"] / "result_Files" / "task_0" / "0000_good_000_r000c000_0.npy")
    assert float(np.abs(cpp - direct).max()) <= 1e-4 * scale


@pytest.mark.parametrize("ckpt", ["other", None])
def test_export_refuses_backbone_weights_other_than_the_trained_ones(project, tmp_path, ckpt):
    args = ["--checkpoint_dir", project["category_dir"], "--output_dir", tmp_path / "export"]
    if ckpt:
        args += ["--ckpt_file", project["ckpts"][ckpt]]
    line = one_error_line(run_command(python_command("export.py", *args)))
    if ckpt:
        assert str(project["ckpts"][ckpt]) in line and "differ" in line
    else:
        assert "--ckpt_file" in line
    assert not (tmp_path / "export").exists()


def test_preprocess_output_equals_the_training_view_and_normalisation(project, cpp_run):
    from src.data.mvtec import list_test_samples
    from src.data.sample import ResizeCrop
    from src.patchcore.featurizer import network_input

    inputs = cpp_run["work"] / "preprocess_Result"
    manifest = read_json(inputs / "manifest.json")
    samples = list_test_samples(str(project["data"]), CATEGORY)
    data = read_json(project["category_dir"] / "model.json")["config"]["data"]
    files = [entry["file"] for item in manifest["items"] for entry in item["inputs"]]
    assert files == sorted(files) == sorted(f"task_0/{name}" for name in os.listdir(inputs / "task_0"))
    assert len(files) == len(samples) == 10
    for item, sample in zip(manifest["items"], samples):
        assert os.path.join(manifest["dataset_path"], item["image"]) == os.path.abspath(sample.image_path)
        assert (item["defect_type"], item["label"]) == (sample.defect_type, sample.label)
        assert (item["mask"] is None) == (sample.mask_path is None)
        (entry,) = item["inputs"]
        array = np.load(inputs / entry["file"])
        assert array.dtype == np.float32 and array.shape == (1, 3, 64, 64)
        viewed = sample.with_view(ResizeCrop(data["resize"], data["imagesize"])).load_image()
        assert np.array_equal(array, network_input([viewed], data["mean"], data["std"]))


def test_run_infer_cpp_reports_the_same_numbers_as_eval(project, cpp_run):
    acc = read_json(cpp_run["work"] / f"acc_{CATEGORY}.json")
    assert acc["score_source"] == "cpp" and acc["latency"]["device_type"] == "CPU"
    assert_matches_eval(acc, project["eval"])
    log_line = (cpp_run["work"] / f"acc_{CATEGORY}.log").read_text().splitlines()[0]
    assert log_line.startswith(f"img_auc: {acc['metrics']['image_auroc']:g}, pixel_auc: ")
    assert log_line in cpp_run["result"].stdout.splitlines()


def test_python_scoring_of_runner_features_gives_the_same_numbers(project, cpp_run, runner, tmp_path):
    meta = read_json(project["export"] / "export.json")
    inputs = cpp_run["work"] / "preprocess_Result"
    result = run_command([runner, "--mindir_path", project["export"] / meta["models"][0]["lite_mindir"], "--input_path",
                          inputs / "task_0", "--result_path", tmp_path / "results" / "task_0", "--threads", "2"])
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "results").glob("*/*_scores.npy"))
    post = run_command(python_command("postprocess.py", "--export_dir", project["export"], "--result_path",
                                      tmp_path / "results", "--manifest", inputs / "manifest.json",
                                      "--category", CATEGORY, "--output_dir", tmp_path))
    assert post.returncode == 0, post.stderr
    acc = read_json(tmp_path / f"acc_{CATEGORY}.json")
    assert acc["score_source"] == "python"
    assert_matches_eval(acc, project["eval"])


@pytest.mark.parametrize("spec", [{"policy": "window_max", "window": 3}, {"policy": "topk_mean", "k": 5},
                                  {"policy": "reweighted", "num_nn": 4}])
def test_each_image_score_policy_scores_alike_in_python_and_from_the_cpp_runner(project, cpp_run, spec):
    # The trained model with another policy: Model.predict (eval.py, predict.py and the service run it) against
    # postprocess.py's composition of the runner's grids (and, for reweighted, its features and the bank).
    from src.deploy.outputs import anomaly_maps
    from src.deploy.package import load_manifest
    from src.inference.model import Model
    from src.patchcore.scoring import build_image_score
    model = Model.load(str(project["category_dir"]), str(project["ckpts"]["trained"]))
    model.scorer.policy = build_image_score(spec)
    _, items = load_manifest(cpp_run["work"] / "preprocess_Result" / "manifest.json")
    python_scores = np.array([score for _, _, score, _ in model.predict_samples([sample for _, sample in items])])
    meta = read_json(project["export"] / "export.json")
    meta["hr"]["image_score"] = spec
    cpp_scores, _, source = anomaly_maps(meta, str(project["export"]), str(cpp_run["work"] / "result_Files"), items)
    assert source == "cpp"
    # the runner's network (MindSpore Lite) differs from MindSpore's by ~1e-6 relative, not the composition
    np.testing.assert_allclose(cpp_scores, python_scores, rtol=1e-4, atol=0)
    default = np.array([s["image_score"] for s in read_json(project["eval"] / "scores.json")])
    assert not np.allclose(python_scores, default, rtol=1e-3)   # the policy changed the scores
    assert len(set(python_scores.tolist())) == len(python_scores)


def test_the_policy_in_model_json_scores_alike_through_eval_and_predict(project, tmp_path):
    # eval.py and predict.py (and the service, which runs predict's load_model) both score by model.json's policy
    import json
    model_dir = tmp_path / CATEGORY
    shutil.copytree(project["category_dir"], model_dir, ignore=shutil.ignore_patterns("eval", "export"))
    meta = read_json(model_dir / "model.json")
    meta["image_score"] = {"policy": "reweighted", "num_nn": 4}
    (model_dir / "model.json").write_text(json.dumps(meta))
    ckpt = project["ckpts"]["trained"]
    evaluated = run_command(python_command("eval.py", "--dataset_path", project["data"], "--category", CATEGORY,
                                           "--output_dir", tmp_path, "--pre_ckpt_path", ckpt))
    assert evaluated.returncode == 0, evaluated.stderr
    scores = read_json(model_dir / "eval" / "scores.json")
    images = [project["data"] / s["path"] for s in scores]
    predicted = run_command(python_command("predict.py", "--model_dir", model_dir, "--pre_ckpt_path", ckpt,
                                           "--output_dir", tmp_path / "predict", "--input", *images))
    assert predicted.returncode == 0, predicted.stderr
    raw = [entry["raw_score"] for entry in read_json(tmp_path / "predict" / "predict.json")]
    np.testing.assert_allclose(raw, [s["image_score"] for s in scores], rtol=1e-6)
    default = [s["image_score"] for s in read_json(project["eval"] / "scores.json")]
    assert not np.allclose(raw, default, rtol=1e-3)   # the policy in model.json was used


def test_run_310_infer_takes_the_older_argument_order_and_reuses_inputs(project, cpp_run):
    result = run_command(["bash", ROOT / "scripts" / "run_310_infer.sh", cpp_run["mindir"], project["data"], "n",
                          "0", CATEGORY],
                         OUTPUT_DIR=str(cpp_run["work"].parent), SAVE_FEATURES="1")  # it rewrites cpp_run's results
    assert result.returncode == 0, result.stderr
    assert "reusing the inputs" in result.stdout
    assert read_json(cpp_run["work"] / f"acc_{CATEGORY}.json")["metrics"]["image_auroc"] == \
        read_json(project["eval"] / "metrics.json")["image_auroc"]


def postprocess(project, cpp_run, result_path, category=CATEGORY):
    inputs = cpp_run["work"] / "preprocess_Result"
    return run_command(python_command("postprocess.py", "--export_dir", project["export"], "--result_path",
                                      result_path, "--manifest", inputs / "manifest.json", "--category", category,
                                      "--output_dir", result_path))


def test_postprocess_rejects_missing_mixed_or_foreign_results(project, cpp_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(cpp_run["work"] / "result_Files", results)
    (results / "task_0" / "0003_good_003_r000c000_scores.npy").unlink()
    assert "mixed" in one_error_line(postprocess(project, cpp_run, results))
    for path in results.glob("task_0/*_scores.npy"):
        path.unlink()
    (results / "task_0" / "0004_scratch_000_r000c000_0.npy").unlink()
    assert str(results / "task_0" / "0004_scratch_000_r000c000_0.npy") in \
        one_error_line(postprocess(project, cpp_run, results))
    assert "manifest.json" in one_error_line(postprocess(project, cpp_run, results, category="carpet"))


@pytest.mark.parametrize("case", ["usage", "missing_model", "need_preprocess", "not_exported", "replaced_model",
                                  "save_features"])
def test_run_infer_cpp_bad_arguments_fail_clearly(project, tmp_path, case):
    data, mindir = project["data"], project["export"] / "patchcore_64x64_lite.mindir"
    args = [mindir, data, "y", CATEGORY, "CPU", "0", tmp_path / "out"]
    expected = {"usage": "usage:", "missing_model": "model file not found", "need_preprocess": "NEED_PREPROCESS",
                "not_exported": "not a model listed", "replaced_model": "sha256 differs",
                "save_features": "SAVE_FEATURES must be 0 or 1"}[case]
    env = {"SAVE_FEATURES": "yes"} if case == "save_features" else {}
    if case == "usage":
        args = args[:3]
    elif case == "missing_model":
        args[0] = tmp_path / "nothing.mindir"
    elif case == "need_preprocess":
        args[2] = "yes"
    elif case != "save_features":
        copy = tmp_path / "export"
        shutil.copytree(project["export"], copy)
        if case == "not_exported":
            args[0] = copy / "model.json"
        else:
            args[0] = copy / mindir.name
            with open(args[0], "ab") as f:
                f.write(b"\0")
    result = run_command(["bash", ROOT / "scripts" / "run_infer_cpp.sh", *args], **env)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out" / CATEGORY / "result_Files").exists()
