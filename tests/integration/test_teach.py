"""Teaching a trained model what is OK (teach.py, src/training/teach.py): a new version that lowers what it was taught,
rolls back byte for byte, repeats byte for byte, and refuses bad input without touching the model.

A small tiled model (128x128 images, four 64-pixel tiles in one task, a thumbnail branch, 3 validation images in the
bank) is trained once through train.py with seeded random mobilenet_v2 weights; the 224-pixel case uses the shared
small plain model. Tests copy a model folder before they change it.
"""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error, digest, folder_digests, noise_image, read_json, run_cli, write_png
from src.utils.errors import InputError

CATEGORY = "synthetic_leather"
NETWORKS = {}   # the networks every model of this file loads, built once
TILED = ["--config", "configs/hr_patchcore.yaml", "-o", "hr.patch_size=64", "-o", "percentage=0.1",
         "-o", "hr.thumbnail={thumbnail_size: 64}",
         "-o", "hr.val_config={anomaly_syn_fn: [Stain, Scratch], val_sample_ratio: 0, val_images: 3}"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from src.data.synthetic import generate_category
    root = tmp_path_factory.mktemp("data")
    generate_category(str(root), category=CATEGORY, texture="leather", image_size=(128, 128), n_train=6,
                      n_test_good=3, n_test_defect_per_type=1, defect_types=("scratch",), seed=0)
    return root


@pytest.fixture(scope="module")
def tiled(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run_cli("train.py", "--dataset_path", str(dataset), "--category", CATEGORY, "--output_dir", str(out),
                     "--seed", "0", "--workers", "1", *TILED)
    assert result.returncode == 0, result.stderr
    return out / CATEGORY


def good_images(dataset):
    folder = dataset / CATEGORY / "test" / "good"
    return [str(folder / name) for name in sorted(os.listdir(folder))]


def copied(model, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(model, target)
    return target


def bank_distances(model_dir, images, version=None):
    """Per image, the raw (unnormalised) patch distances of every view to each bank of the version, concatenated:
    the tiled model's scores pass through normalisers that a new version fits again."""
    from src.data.sample import Sample
    from src.inference.model import Model
    model = Model.load(str(model_dir), version=version, extractors=NETWORKS)
    result = []
    for path in images:
        image = model.prepare(Sample(path)).load_image()
        views = {task.name: [(image, tile) for tile in tiles] for task, tiles in model.assignment(image)}
        parts = []
        for name, detector in sorted(model.detectors.items()):
            for features in model.featurizers[name].view_batches(views.get(name, [(image, None)])
                                                                 if name != "thumbnail" else
                                                                 [(image, _whole(model))]):
                parts.append(detector.patch_scores(features).ravel())
        result.append(np.concatenate(parts))
    return result


def _whole(model):
    from src.tiling.plan import WholeImage
    return WholeImage(tuple(model.settings["thumbnail_size"]))


def raw_scores(model_dir, images, version=None):
    from src.data.sample import Sample
    from src.inference.model import Model
    model = Model.load(str(model_dir), version=version, extractors=NETWORKS)
    return [float(score) for _, _, score, _ in model.predict_samples([Sample(path) for path in images])]


def test_a_taught_version_scores_its_images_lower_rolls_back_byte_for_byte_and_repeats_byte_for_byte(
        dataset, tiled, tmp_path):
    from src.training.teach import teach_ok
    first, second = copied(tiled, tmp_path, "a"), copied(tiled, tmp_path, "b")
    trained = folder_digests(first)
    taught, other = good_images(dataset)[:2], good_images(dataset)[2:]
    before = bank_distances(first, taught + other)

    result = run_cli("teach.py", "--model_dir", str(first), "--input", *taught)
    assert result.returncode == 0, result.stderr
    assert "version 2 (from version 1): 2 image(s) taught; task_0 +" in result.stdout
    meta = read_json(first / "model.json")
    record = meta["model_version"]
    assert record["number"] == 2 and record["parent"] == {"number": 1, "sha256": trained["model.json"]}
    assert [entry["sha256"] for entry in record["added"]] == [digest(path) for path in taught]
    assert (first / "versions" / "1.json").read_bytes() == (tiled / "model.json").read_bytes()
    assert (first / "versions" / "2.json").read_bytes() == (first / "model.json").read_bytes()
    for name, job in meta["jobs"].items():
        assert job["folder"] == f"versions/2/{name}" and job["bank_size"] >= read_json(
            tiled / "model.json")["jobs"][name]["bank_size"]
    # the taught images joined the validation set (as they are and with a defect), scored without their own entries
    items = meta["validation"]["items"]
    assert len(items) == 6 + 4 and {item["source_index"] for item in items[6:]} == {6, 7}
    assert all(isinstance(item["score"], float) for item in items)
    assert read_json(first / "logs" / "teach_v2.json")["version"] == 2

    after = bank_distances(first, taught + other)
    for new, old in zip(after, before):   # a grown bank never raises a distance ...
        assert np.all(new <= old * (1 + 1e-5) + 1e-6)
    for new, old in zip(after[:2], before[:2]):   # ... and what it was taught now lies closer to it
        assert new.mean() < old.mean()
    scores = raw_scores(first, taught)
    assert raw_scores(first, taught, version=1) != scores                # the old version stays readable
    assert all(np.array_equal(a, b) for a, b in zip(bank_distances(first, taught, version=1), before[:2]))

    # the same images in the same order, through the Python API this time: the same bytes
    summary = teach_ok(str(second), taught, extractors=NETWORKS)
    assert summary["version"] == 2 and summary["jobs"]["task_0"]["added"] > 0
    versions = {path: value for path, value in folder_digests(first).items() if not path.startswith("logs")}
    assert versions == {path: value for path, value in folder_digests(second).items() if not path.startswith("logs")}

    listed = run_cli("teach.py", "--model_dir", str(first), "--versions")
    assert listed.returncode == 0 and "  version 1: trained" in listed.stdout
    assert "* version 2: from version 1, 2 image(s) taught" in listed.stdout
    rolled = run_cli("teach.py", "--model_dir", str(first), "--rollback")
    assert rolled.returncode == 0 and "version 1 is active (was version 2)" in rolled.stdout
    now = folder_digests(first)
    assert {path: now[path] for path in trained} == trained          # every file of version 1, byte for byte
    assert all(np.array_equal(a, b) for a, b in zip(bank_distances(first, taught), before[:2]))
    # taught again from version 1: version 3, whose parent is 1; version 2 stays and can be activated again
    assert teach_ok(str(first), taught[:1], extractors=NETWORKS)["version"] == 3
    assert read_json(first / "model.json")["model_version"]["parent"]["number"] == 1
    assert run_cli("teach.py", "--model_dir", str(first), "--activate", "2").returncode == 0
    assert (first / "model.json").read_bytes() == (second / "model.json").read_bytes()


def test_bad_input_is_one_line_and_leaves_the_model_untouched(dataset, tiled, tmp_path):
    from src.training.teach import teach_ok
    model = copied(tiled, tmp_path, "model")
    untouched = folder_digests(model)
    good = good_images(dataset)
    broken = tmp_path / "broken.png"
    broken.write_bytes(open(good[0], "rb").read()[:200])   # truncated
    small = tmp_path / "small.png"
    write_png(small, noise_image(0, 64, 64))
    weights = tmp_path / "other_backbone.ckpt"
    weights.write_bytes(b"not the weights this model was trained with")
    for arguments, needle in ((["--input", str(broken)], "broken.png"), (["--activate", "7"], "no model version 7")):
        assert_one_line_error(run_cli("teach.py", "--model_dir", str(model), *arguments), needle)
        assert folder_digests(model) == untouched, arguments
    for images, checkpoint, needle in (
            ([str(small)], None, "image is 64x64, but the model was trained on 128x128 images"),
            (good[:1], str(weights), "backbone weights differ"),
            ([good[0], good[0]], None, "the same image as")):
        with pytest.raises(InputError, match=needle):
            teach_ok(str(model), images, checkpoint)
    with pytest.raises(InputError, match="version 1 is the trained model: no earlier version"):
        from src.app.teach import _parent
        _parent(str(model))
    with pytest.raises(InputError, match="training image not found"):   # the validation cannot be scored again
        moved = copied(tiled, tmp_path, "moved")
        meta = read_json(moved / "model.json")
        meta["train_samples"][0] += ".moved"
        (moved / "model.json").write_text(json.dumps(meta))
        teach_ok(str(moved), good[:1])
    assert folder_digests(model) == untouched
    teach_ok(str(model), good[:1], extractors=NETWORKS)
    with pytest.raises(InputError, match=r"already taught \(version 2\)"):
        teach_ok(str(model), good[:1], extractors=NETWORKS)
    # a model with versions is not retrained over: its versions would be lost
    assert_one_line_error(run_cli("train.py", "--train_dir", str(dataset / CATEGORY / "train" / "good"), "--category",
                                  "model", "--output_dir", str(tmp_path), *TILED), "holds versions taught since training")


def test_a_plain_model_is_taught_too_and_its_thresholds_come_from_the_model(small_dataset, small_model, tmp_path):
    """The 224-pixel model: no normaliser per task, validation scored through the network; an export of a taught
    version carries its banks in <job>/."""
    from src.deploy.export import export_plan
    from src.training.teach import teach_ok
    model = copied(small_model[0], tmp_path, "plain")
    meta = read_json(model / "model.json")
    images = good_images(small_dataset)[:1]
    before = raw_scores(model, images)
    summary = teach_ok(str(model), images)
    after = read_json(model / "model.json")
    assert summary["version"] == 2 and after["thresholds"]["image"] > 0
    assert len(after["validation"]["items"]) == len(meta["validation"]["items"]) + 2
    assert raw_scores(model, images)[0] < before[0]
    plan = export_plan(str(model))
    assert (str(model / "versions" / "2" / "task_0" / "faiss.index"), "task_0/faiss.index") in plan.copies
    assert "folder" not in plan.contents["model.json"]["jobs"]["task_0"]
