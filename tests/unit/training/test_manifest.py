"""src/training/manifest.py: the model folder's housekeeping and what model.json holds besides the banks."""
import json
import os

import numpy as np

import src  # noqa: F401
from src.config.hr import ThumbnailSettings, ValidationSettings
from src.config.loader import load_config
from src.data.sample import Resize, Sample
from src.patchcore.scoring import build_image_score
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.tiling.tasks import A2OTaskGenerator
from src.training.manifest import model_meta, prepare_model_folder, remove_stale_jobs
from src.training.model_plan import ModelPlan
from src.training.validation import build_validation_set


def test_model_meta_records_the_plan_the_config_and_the_validation_set():
    config = load_config(None, ["batch_size=3"])
    samples = [Sample(np.full((64, 48, 3), k, np.uint8), image_size=(48, 64)) for k in range(4)]
    plan = MultiResolutionHRImageSpliter((48, 64), (48, 32))
    validation = ValidationSettings(("RandomBox",), val_sample_ratio=0.25)
    items = build_validation_set(samples, validation.synthesizers, validation.val_sample_ratio, 0).items
    model_plan = ModelPlan(samples, plan, A2OTaskGenerator().create_tasks(samples, plan), None, {"name": "A2O"},
                           config.image_score, True, "demo", ThumbnailSettings((24, 32), "mean"), None, validation)
    meta = model_meta(config, model_plan, build_image_score("max"), 7, None, items)
    assert (meta["category"], meta["image_size"], meta["seed"], meta["batch_size"]) == ("demo", [48, 64], 7, 3)
    assert meta["view"] == Resize((48, 64)).to_dict() and meta["pretrained"] is False
    assert meta["inference"]["thumbnail_size"] == [24, 32] and meta["inference"]["thumbnail_merge"] == "mean"
    assert meta["validation"]["val_sample_ratio"] == 0.25 and meta["validation"]["held_out"] is True
    assert meta["validation"]["scheme"] == "held_out" and "folds" not in meta["validation"]
    assert [item["source_index"] for item in meta["validation"]["items"]] == [item.source_index for item in items]
    assert meta["config"] == config.to_dict() and meta["task_generator"] == {"name": "A2O"}
    json.dumps(meta)   # model.json holds plain JSON


def test_a_model_folder_is_marked_incomplete_and_rid_of_a_killed_runs_staging_and_stale_banks(tmp_path):
    plan = MultiResolutionHRImageSpliter(64, 32)
    tasks = A2OTaskGenerator().create_tasks([], plan)
    for name in ("model.json", ".task_0.partial-1/x", ".other.partial-2/x", "task_5/bank.json", "notes/bank.json"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_text("{}")
    tasks_path = prepare_model_folder(str(tmp_path), {"task_0": None}, tasks, plan, lambda *args, **kwargs: None)
    assert tasks_path == str(tmp_path / "tasks.json") and os.path.isfile(tasks_path)
    assert not (tmp_path / "model.json").exists() and not (tmp_path / ".task_0.partial-1").exists()
    assert (tmp_path / ".other.partial-2").exists()   # not a job of this run: left alone
    remove_stale_jobs(str(tmp_path), {"task_0": None})
    assert not (tmp_path / "task_5").exists() and (tmp_path / "notes").exists()
