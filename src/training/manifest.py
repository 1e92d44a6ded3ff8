"""The model folder's housekeeping: which banks of an earlier run are complete and kept, staging leftovers of a
killed run, banks of tasks the model no longer has, the sha256 of each bank for ``model.json`` (written last: the
model is complete only once it exists), and what model.json holds besides the banks."""
import contextlib
import os
from logging import WARNING
import platform
import shutil

import numpy as np

from src.inference.model import MODEL_FILE, MODEL_FORMAT, MODEL_VERSION, TASKS_FILE, THUMBNAIL
from src.patchcore.memory_bank import INDEX_FILE, METADATA_FILE
from src.tiling.tasks import save_tasks
from src.training.jobs import is_complete
from src.utils.io import sha256_of


def prepare_model_folder(root, jobs, tasks, indexes, say):
    """Mark the model incomplete (no model.json), drop staging folders of ``jobs`` left by a killed run and write
    ``tasks.json`` (returns its path)."""
    os.makedirs(root, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(root, MODEL_FILE))
    for entry in os.listdir(root):
        if entry.startswith(".") and ".partial-" in entry and entry[1:].split(".partial-")[0] in jobs:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    tasks_path = os.path.join(root, TASKS_FILE)
    save_tasks(tasks_path, tasks, indexes)
    say("Tasks config is saved as: %s", tasks_path)
    for task in tasks:
        say(str(task))
    return tasks_path


def jobs_to_train(root, jobs, fingerprints, detector_class, say):
    """The ``jobs`` whose bank in ``root`` does not verify with the same fingerprint; the others are kept."""
    done = sorted(name for name in fingerprints if is_complete(os.path.join(root, name), fingerprints[name],
                                                               detector_class, lambda text: say(text, level=WARNING)))
    if done:
        say("Resuming: %d of %d banks are complete and verified, kept: %s", len(done), len(jobs), ", ".join(done))
    return {name: job for name, job in jobs.items() if name not in done}


def bank_digest(root, name):
    """The sha256 of a trained job's bank files, for model.json."""
    folder = os.path.join(root, name)
    return {"bank_sha256": {file: sha256_of(os.path.join(folder, file)) for file in (INDEX_FILE, METADATA_FILE)}}


def remove_stale_jobs(root, jobs):
    """Banks of tasks an earlier run had and this one has not (e.g. more tasks before)."""
    for entry in os.listdir(root):
        folder = os.path.join(root, entry)
        if entry not in jobs and not entry.startswith(".") and os.path.isfile(os.path.join(folder, METADATA_FILE)) \
                and (entry == THUMBNAIL or entry.startswith("task_")):
            shutil.rmtree(folder)


def validation_scheme(items, validation):
    """How the validation ``items`` were kept off their own surface's bank entries, for model.json: "held_out" (no
    item is in the banks), "leave_own_out" (each without its own image's) or "k_fold" (each without those of every
    training image in its fold) with the count of ``validation.folds`` (None: only labelled images validate)."""
    folds = None if validation is None else validation.folds
    if not any(item.excluded_sources is not None for item in items):
        scheme = "held_out"
    else:
        scheme = "leave_own_out" if folds is None else "k_fold"
    return {"held_out": scheme == "held_out", "scheme": scheme, **({"folds": folds} if scheme == "k_fold" else {})}


def model_meta(config, model_plan, image_score, seed, pre_ckpt_path, items):
    """model.json's description of the model trained from ``config`` and ``model_plan`` with ``image_score`` (the
    built policy) and the validation ``items`` (the trainer adds the banks, thresholds, memory and time)."""
    import faiss
    import mindspore as ms
    thumbnail, validation = model_plan.thumbnail, model_plan.val_config
    return {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "category": model_plan.category,
        "view": model_plan.view.to_dict(), "image_size": list(model_plan.image_size), "seed": seed,
        "pretrained": pre_ckpt_path is not None,
        "backbone_checkpoint_sha256": sha256_of(pre_ckpt_path) if pre_ckpt_path else None,
        # where predict.py finds the weights (checked against the sha256; --pre_ckpt_path overrides it)
        "backbone_checkpoint": os.path.abspath(pre_ckpt_path) if pre_ckpt_path else None,
        "data": {"mean": list(config.data.mean), "std": list(config.data.std)},
        "batch_size": config.data.batch_size, "fusion_weights": model_plan.fusion_weights,
        "image_score": image_score.to_dict(),
        "inference": {"gaussian_sigma": float(config.postprocess["gaussian_sigma"]),
                      "search": config.postprocess["search"],
                      "thumbnail_size": None if thumbnail is None else list(thumbnail.size),
                      "thumbnail_merge": None if thumbnail is None else thumbnail.merge},
        "task_generator": model_plan.task_generator_spec,
        "config": config.to_dict(),
        "train_samples": [os.path.abspath(s.image_path) if s.image_path else s.name for s in model_plan.samples],
        "validation": None if not items else {
            "val_sample_ratio": None if validation is None else validation.val_sample_ratio,
            "max_patch_number": None if validation is None else validation.max_patch_number,
            **validation_scheme(items, validation),
            "items": [item.describe() for item in items]},
        "versions": {"python": platform.python_version(), "mindspore": ms.__version__,
                     "faiss": faiss.__version__, "numpy": np.__version__},
    }
