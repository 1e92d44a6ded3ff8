"""Inspecting new images with a 224-pixel model: predict.py and the Python API, decisions in eval.py, any folder
layout and the dataset check."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import SMALL_PLAIN, assert_one_line_error, digest, run_cli
from src.evaluation.metrics import DECISION_KEYS

CATEGORY = "synthetic_leather"
SMALL = SMALL_PLAIN
KEYS = {"input_path", "image_score", "raw_score", "label", "image_threshold", "review_threshold", "review_image_score",
        "pixel_threshold", "regions", "model"}


def common(dataset, out):
    return ["--dataset_path", str(dataset), "--category", CATEGORY, "--output_dir", str(out)]


@pytest.fixture(scope="module")
def dataset(small_dataset):
    return small_dataset


@pytest.fixture(scope="module")
def model(small_model, dataset):
    folder, train = small_model
    evaluate = run_cli("eval.py", *common(dataset, folder.parent))
    assert evaluate.returncode == 0, evaluate.stderr
    return {"dir": folder, "out": folder.parent, "train": train, "eval": evaluate}


def test_training_sets_thresholds_on_validation_images_that_stay_in_the_bank(model):
    meta = json.loads((model["dir"] / "model.json").read_text())
    # 10 of the 12 training images, each as it is and with a synthetic defect: 10 normal + 10 anomalous
    assert meta["validation"]["held_out"] is False and len(meta["validation"]["items"]) == 20
    assert meta["thresholds"]["image_method"] == "max_f1" and meta["thresholds"]["pixel"] is not None
    assert meta["score_normalizer"]["high"] == meta["thresholds"]["image"]
    bank = json.loads((model["dir"] / "task_0" / "bank.json").read_text())
    assert len(bank["sources"]) == bank["bank_size"] and set(bank["sources"]) <= set(range(12))
    assert "Thresholds (f1) from 20 validation images (10 anomalous" in model["train"].stdout
    assert "20 also in the bank, scored without their own entries" in model["train"].stdout
    assert "too few to set a threshold reliably" not in model["train"].stdout   # 10 and 10: enough
    # the rates come with their uncertainty
    assert re.search(r"recall \d\.\d\d \(\d+/10, 95% interval \d\.\d\d-\d\.\d\d\)", model["train"].stdout)


def test_eval_reports_the_decisions_at_the_persisted_threshold(model):
    metrics = json.loads((model["dir"] / "eval" / "metrics.json").read_text())
    meta = json.loads((model["dir"] / "model.json").read_text())
    assert set(DECISION_KEYS) <= set(metrics) and metrics["image_threshold"] == meta["thresholds"]["image"]
    scores = json.loads((model["dir"] / "eval" / "scores.json").read_text())
    flagged = [s["image_score"] >= metrics["image_threshold"] for s in scores]
    defects = [f for f, s in zip(flagged, scores) if s["label"] == 1]
    assert metrics["image_recall"] == pytest.approx(sum(defects) / len(defects))
    assert set(metrics["recall_per_defect_type"]) == {"scratch", "stain"}
    assert "image_recall" in model["eval"].stdout


def test_predict_writes_a_json_and_a_picture_per_image_with_evals_raw_score(model, dataset, tmp_path):
    result = run_cli("predict.py", "--model_dir", str(model["dir"]), "--input", str(dataset / CATEGORY / "test"),
                     "--output_dir", str(tmp_path), "--save_map")
    assert result.returncode == 0, result.stderr
    eval_scores = {s["path"]: s["image_score"]
                   for s in json.loads((model["dir"] / "eval" / "scores.json").read_text())}
    names = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert len(names) == 7 and names == sorted(p.stem for p in tmp_path.glob("*.npy"))
    labels = []
    for name in names:
        fields = json.loads((tmp_path / f"{name}.json").read_text())
        assert KEYS <= set(fields) and fields["label"] in ("OK", "REVIEW", "NG")
        # the default review band: REVIEW from the review threshold up to the image threshold
        in_band = fields["review_threshold"] <= fields["raw_score"] < fields["image_threshold"]
        assert (fields["label"] == "REVIEW") == in_band
        assert (fields["label"] == "REVIEW") == (fields["review_image_score"] <= fields["image_score"] < 0.5)
        expected = eval_scores[os.path.relpath(fields["input_path"], dataset)]
        assert abs(fields["raw_score"] - expected) <= 1e-6 * abs(expected)
        assert (fields["image_score"] > 0.5) == (fields["raw_score"] > fields["image_threshold"])
        assert fields["model"]["sha256"] == digest(model["dir"] / "model.json")
        for region in fields["regions"]:
            x, y, w, h = region["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 72 and y + h <= 72 and region["area"] > 0
            assert region["source"] in ("pixel_threshold", "score_peak")
        assert fields["regions"] or fields["label"] == "OK"    # an NG or REVIEW image is always shown where
        assert np.load(tmp_path / f"{name}.npy").shape == (64, 64)
        labels.append(fields["label"])
    assert f"7 images: {labels.count('OK')} OK, {labels.count('REVIEW')} REVIEW, {labels.count('NG')} NG (" \
        in result.stdout
    times = re.search(r"per image network (\d+\.\d+) s, scoring (\d+\.\d+) s, map (\d+\.\d+) s; network compile "
                      r"(\d+\.\d+) s once, apart", result.stdout)
    assert times and float(times[1]) > 0   # this tiny bank's scoring can round to 0.000 s
    assert float(times[4]) > float(times[1])   # a graph compile takes longer than an image's network time
    assert len(json.loads((tmp_path / "predict.json").read_text())) == 7


def test_an_ng_image_without_a_pixel_over_the_threshold_gets_its_score_peak_as_region(model, dataset):
    from src.inference.predict import load_model
    predictor = load_model(str(model["dir"]))
    predictor.rule.pixel_threshold = float("inf")     # no pixel decides: the case of a pixel threshold set too high
    (ok,) = predictor.predict(str(dataset / CATEGORY / "test" / "good" / "000.png"))
    predictor.rule.image_threshold = float("-inf")    # every image NG
    for result in predictor.predict(str(dataset / CATEGORY / "test")):
        (region,) = result.fields["regions"]
        assert region["source"] == "score_peak" and result.label == "NG"
        peak = np.unravel_index(int(np.argmax(result.raw_map)), result.raw_map.shape)
        assert result.decision[peak] and 0 < result.decision.sum() < result.decision.size
        assert region["max_score"] == pytest.approx(float(result.normalised_map.max()))
    assert ok.fields["regions"] == [] or ok.label != "OK"     # an OK image gets no peak region


def test_the_python_api_on_an_array_gives_the_files_result(model, dataset):
    from src.data.sample import Sample
    from src.inference.predict import load_model
    path = dataset / CATEGORY / "test" / "stain" / "001.png"
    predictor = load_model(str(model["dir"]))
    (from_file,) = predictor.predict(str(path))
    (from_array,) = predictor.predict(Sample(str(path)).load_image())
    assert from_array.fields["raw_score"] == from_file.fields["raw_score"]
    assert from_array.fields["regions"] == from_file.fields["regions"] and from_array.fields["input_path"] is None
    assert from_file.name == "001" and from_array.name == "array_000"
    assert predictor.review_threshold <= predictor.image_threshold   # the default review band (postprocess.review)
    # every part of the two predictions took time, and was counted (predict.py prints them per image)
    assert all(seconds > 0 for seconds in predictor.model.timings.values()), predictor.model.timings


def test_an_unreadable_file_stops_predict_with_one_line_and_writes_nothing(model, dataset, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(dataset / CATEGORY / "test" / "good", folder)
    victim = folder / "001.png"
    victim.write_bytes(victim.read_bytes()[:150])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_cli("predict.py", "--model_dir", str(model["dir"]), "--input", str(folder),
                     "--output_dir", str(tmp_path / "out"))
    assert_one_line_error(result, str(victim))
    assert sorted(os.listdir(tmp_path / "out")) == ["keep.txt"]


@pytest.mark.parametrize("case", ["missing", "corrupt_bank"])
def test_a_missing_or_corrupt_model_is_one_line(model, dataset, tmp_path, case):
    target = tmp_path / "model"
    shutil.copytree(model["dir"], target)
    if case == "missing":
        (target / "model.json").unlink()
        needle = f"{target / 'model.json'}: no trained model here"
    else:
        with open(target / "task_0" / "faiss.index", "ab") as f:
            f.write(b"\0")
        needle = f"{target / 'task_0' / 'faiss.index'}: sha256 differs"
    result = run_cli("predict.py", "--model_dir", str(target), "--input", str(dataset / CATEGORY / "test"))
    assert_one_line_error(result, needle)


def test_a_flat_folder_trains_the_same_bank_as_the_mvtec_layout(model, dataset, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((dataset / CATEGORY / "train" / "good").iterdir()):
        shutil.copy(path, flat / path.name)
    result = run_cli("train.py", "--train_dir", str(flat), "--category", CATEGORY, "--output_dir", str(tmp_path / "o"),
                     *SMALL)
    assert result.returncode == 0, result.stderr
    assert digest(tmp_path / "o" / CATEGORY / "task_0" / "faiss.index") == digest(model["dir"] / "task_0" / "faiss.index")
    evaluate = run_cli("eval.py", "--test_dir", str(dataset / CATEGORY / "test"), "--category", CATEGORY,
                       "--output_dir", str(tmp_path / "o"))
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "o" / CATEGORY / "eval" / "metrics.json").read_text())
    assert metrics["image_auroc"] == json.loads((model["dir"] / "eval" / "metrics.json").read_text())["image_auroc"]
    assert metrics["pixel_auroc"] is None   # no --mask_dir: image metrics only


def test_check_dataset_reports_every_problem_with_its_path(dataset, tmp_path):
    from PIL import Image
    clean = run_cli("train.py", "--check_dataset", *common(dataset, tmp_path / "clean"))
    assert clean.returncode == 0 and "Check dataset passed !" in clean.stdout, clean.stderr
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    root = data / CATEGORY
    truncated = root / "train" / "good" / "003.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    wrong = root / "ground_truth" / "stain" / "000_mask.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(wrong)
    duplicate = root / "train" / "good" / "zz_copy.png"
    shutil.copy(root / "train" / "good" / "001.png", duplicate)
    result = run_cli("train.py", "--check_dataset", *common(data, tmp_path / "bad"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stderr
    for path in (truncated, wrong, duplicate):
        assert any(line.startswith(f"error: {path}: ") for line in errors), path
    report = json.loads((tmp_path / "bad" / CATEGORY / "check_dataset" / "check_dataset_result.json").read_text())
    assert report["check_pass"] is False and len(report["problems"]) == 3
    assert report["splits"]["train"]["good"]["count"] == 13
    assert (tmp_path / "bad" / CATEGORY / "check_dataset" / "image_sizes.png").is_file()


def test_real_labelled_validation_images_set_the_thresholds_and_the_review_band(model, dataset, tmp_path):
    test_dir = dataset / CATEGORY / "test"
    result = run_cli("train.py", *common(dataset, tmp_path), *SMALL, "-o", "val_config=null", "--val_dir",
                     str(test_dir), "--val_mask_dir", str(dataset / CATEGORY / "ground_truth"),
                     "-o", "postprocess.review=recall:1")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / CATEGORY / "model.json").read_text())
    items = meta["validation"]["items"]
    assert len(items) == 7 and sorted(item["label"] for item in items) == [0] * 3 + [1] * 4
    assert all(item["path"].startswith(str(test_dir)) and len(item["sha256"]) == 64 for item in items)
    assert meta["thresholds"]["image_method"] == "max_f1"
    assert "Thresholds (f1) from 7 validation images (4 anomalous)" in result.stdout
    # the bank is the same: the validation images are not training images
    assert digest(tmp_path / CATEGORY / "task_0" / "faiss.index") == digest(model["dir"] / "task_0" / "faiss.index")
    # the review band keeps every labelled defect at or above its lower threshold: none of them is OK
    thresholds = meta["thresholds"]
    assert thresholds["review_method"] == "recall:1" and thresholds["review"] <= thresholds["image"]
    assert "review threshold" in result.stdout and "outside the band" in result.stdout
    predicted = run_cli("predict.py", "--model_dir", str(tmp_path / CATEGORY), "--input", str(test_dir),
                        "--output_dir", str(tmp_path / "predict"))
    assert predicted.returncode == 0, predicted.stderr
    fields = json.loads((tmp_path / "predict" / "predict.json").read_text())
    assert all(f["review_threshold"] == thresholds["review"] for f in fields)
    defective = [f["label"] for f in fields if "good" not in f["input_path"]]
    assert len(defective) == 4 and "OK" not in defective
    for f in fields:   # an image in the band is REVIEW and shown where
        in_band = thresholds["review"] <= f["raw_score"] < thresholds["image"]
        assert (f["label"] == "REVIEW") == in_band and (f["label"] == "OK" or f["regions"])
    counts = {name: sum(f["label"] == name for f in fields) for name in ("OK", "REVIEW", "NG")}
    assert f"{counts['OK']} OK, {counts['REVIEW']} REVIEW, {counts['NG']} NG" in predicted.stdout
    from src.inference.predict import load_model
    assert load_model(str(tmp_path / CATEGORY)).review_threshold == thresholds["review"]
