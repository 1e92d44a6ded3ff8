"""train.py / eval.py end to end on a tiny generated category: outputs, determinism, bad input."""
import json
import os
import shutil

import pytest

from conftest import assert_one_line_error, digest, leftovers, run_cli, small_category, train_small
from src.evaluation.metrics import METRIC_KEYS

SMALL = ["-o", "resize=72", "-o", "imagesize=64", "-o", "batch_size=4", "-o", "percentage=0.25"]


def common(dataset, out, category="synthetic_leather", seed=0):
    return ["--dataset_path", str(dataset), "--category", category, "--output_dir", str(out), "--seed", str(seed)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_category(tmp_path_factory.mktemp("data"), n_train=6)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    train_small(dataset, out)
    return out


def test_train_writes_a_one_tile_model_and_its_bank(trained, dataset):
    folder = trained / "synthetic_leather"
    assert sorted(os.listdir(folder)) == ["logs", "model.json", "task_0", "tasks.json", "train_result.json"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "patchcore-ms/model" and meta["pretrained"] is False and meta["seed"] == 0
    assert meta["config"]["data"]["imagesize"] == 64
    assert meta["view"] == {"name": "resize_crop", "resize": 72, "crop": 64} and meta["image_size"] == [64, 64]
    assert meta["image_score"] == {"policy": "max"}
    assert list(meta["jobs"]) == ["task_0"] and meta["inference"]["thumbnail_size"] is None
    tasks = json.loads((folder / "tasks.json").read_text())
    assert [len(task["indexes"]) for task in tasks["tasks"]] == [1]   # one tile covers the 64x64 view
    bank = json.loads((folder / "task_0" / "bank.json").read_text())
    assert bank["bank_size"] == int(6 * 8 * 8 * 0.25)  # 6 images x 8x8 layer2 grid x 25%
    assert bank["index_sha256"] == digest(folder / "task_0" / "faiss.index")
    assert meta["jobs"]["task_0"]["bank_sha256"]["faiss.index"] == digest(folder / "task_0" / "faiss.index")
    assert meta["tasks_sha256"] == digest(folder / "tasks.json")
    assert leftovers(trained) == []


def test_a_model_of_the_old_layout_is_refused_with_one_line(trained, dataset, tmp_path):
    old = tmp_path / "synthetic_leather"
    old.mkdir()
    shutil.copy(trained / "synthetic_leather" / "task_0" / "bank.json", old / "bank.json")
    shutil.copy(trained / "synthetic_leather" / "task_0" / "faiss.index", old / "faiss.index")
    result = run_cli("eval.py", *common(dataset, tmp_path))
    assert_one_line_error(result, f"{old / 'bank.json'}: a model of an older version")
    assert "retrain it with train.py" in result.stderr


def test_same_seed_gives_identical_bank_and_scores(trained, dataset, tmp_path):
    again = run_cli("train.py", *common(dataset, tmp_path), *SMALL)
    assert again.returncode == 0, again.stderr
    assert "RANDOM weights" in again.stderr
    for name in ("task_0/faiss.index", "task_0/bank.json", "tasks.json"):
        assert digest(trained / "synthetic_leather" / name) == digest(tmp_path / "synthetic_leather" / name)
    scores = []
    for out in (trained, tmp_path):
        result = run_cli("eval.py", *common(dataset, out))
        assert result.returncode == 0, result.stderr
        scores.append(json.loads((out / "synthetic_leather" / "eval" / "scores.json").read_text()))
    assert scores[0] == scores[1]


def test_different_seed_gives_a_different_bank(trained, dataset, tmp_path):
    result = run_cli("train.py", *common(dataset, tmp_path, seed=1), *SMALL)
    assert result.returncode == 0, result.stderr
    assert digest(trained / "synthetic_leather" / "task_0" / "faiss.index") != \
        digest(tmp_path / "synthetic_leather" / "task_0" / "faiss.index")


def test_eval_writes_metrics_scores_table_and_pictures(trained, dataset):
    result = run_cli("eval.py", *common(dataset, trained))
    assert result.returncode == 0, result.stderr
    folder = trained / "synthetic_leather" / "eval"
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0
    scores = json.loads((folder / "scores.json").read_text())
    assert len(scores) == 3 + 4 and {s["label"] for s in scores} == {0, 1}
    assert sorted(s["defect_type"] for s in scores) == ["good"] * 3 + ["scratch"] * 2 + ["stain"] * 2
    assert "image_auroc" in (folder / "metrics.md").read_text() and "image_auroc" in result.stdout
    assert len(os.listdir(folder / "vis")) == 7


def copy_dataset(dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(dataset, target)
    return target


def test_truncated_training_image_fails_cleanly_and_keeps_previous_output(trained, dataset, tmp_path):
    data = copy_dataset(dataset, tmp_path)
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = digest(out / "synthetic_leather" / "task_0" / "faiss.index")
    victim = data / "synthetic_leather" / "train" / "good" / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    result = run_cli("train.py", *common(data, out), *SMALL)
    assert_one_line_error(result, str(victim))
    assert digest(out / "synthetic_leather" / "task_0" / "faiss.index") == before
    assert leftovers(out) == []


def test_mask_of_wrong_size_fails_cleanly(trained, dataset, tmp_path):
    import cv2
    import numpy as np
    data = copy_dataset(dataset, tmp_path)
    mask = data / "synthetic_leather" / "ground_truth" / "stain" / "000_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "synthetic_leather" / "eval", ignore_errors=True)
    result = run_cli("eval.py", *common(data, out))
    assert_one_line_error(result, str(mask))
    assert not (out / "synthetic_leather" / "eval").exists()
    assert leftovers(out / "synthetic_leather") == []


@pytest.mark.parametrize("case", ["empty_train", "unknown_category", "missing_path"])
def test_dataset_errors(dataset, tmp_path, case):
    data = copy_dataset(dataset, tmp_path)
    category, needle = "synthetic_leather", None
    if case == "empty_train":
        folder = data / "synthetic_leather" / "train" / "good"
        shutil.rmtree(folder)
        folder.mkdir()
        needle = str(folder)
    elif case == "unknown_category":
        category, needle = "bottle", "unknown category 'bottle'"
    else:
        data, needle = tmp_path / "nowhere", str(tmp_path / "nowhere")
    out = tmp_path / "out"
    result = run_cli("train.py", *common(data, out, category=category), *SMALL)
    assert_one_line_error(result, needle)
    assert not out.exists() or os.listdir(out) == []


def test_eval_refuses_a_different_backbone(trained, dataset, tmp_path):
    ckpt = tmp_path / "other.ckpt"
    ckpt.write_bytes(b"not the weights used for training")
    result = run_cli("eval.py", *common(dataset, trained), "--pre_ckpt_path", str(ckpt))
    assert_one_line_error(result, "differ from the ones the model was trained with")


def test_bad_override_is_one_line_error(dataset, tmp_path):
    result = run_cli("train.py", *common(dataset, tmp_path), "-o", "percentage=2")
    assert_one_line_error(result, "percentage")
    result = run_cli("train.py", *common(dataset, tmp_path), "-o", "no_such_key=1")
    assert_one_line_error(result, "unknown config entry")
