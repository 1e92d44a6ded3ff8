"""preprocess.py's work: test images -> the exported model's inputs, float32 NCHW .npy files + manifest entries.

Every test image is seen through the model's view, cut into its tiles, one folder per task (routed as eval.py
routes them for Retrieve models; with fusion also each tile's coarser views ``<tile>_l<k>.npy``), plus its
thumbnail, and normalised by ``src.patchcore.featurizer.network_input``, the function training uses.
"""
import os

import numpy as np

from src.data.sample import view_from_dict
from src.deploy.package import input_stem, job_path, manifest_entry, scoring_jobs, verify_files
from src.inference.model import MODEL_FILE, TASKS_FILE, THUMBNAIL, Model
from src.patchcore.featurizer import network_input
from src.tiling.plan import WholeImage, crop, crop_levels
from src.tiling.tasks import assign_tiles, load_tasks, routing_generator


def write_inputs(meta, export_dir, samples, dataset_path, stage, progress):
    """Every test image's tiles (in its task's folder; with fusion, also their coarser views) and thumbnail as
    [1, 3, h, w] float32 files.

    Images are loaded as eval.py loads them (through the model's view), and tiles go to tasks as eval.py gives
    them (``assign_tiles`` with the export's tasks.json and model.json). Returns (manifest
    items, manifest header); an item lists its inputs in the order Model scores them: task by task, tiles in
    the task's order, then the thumbnail.
    """
    hr, normalisation = meta["hr"], meta["preprocess"]
    mean, std = normalisation["mean"], normalisation["std"]
    verify_files(export_dir, meta, [MODEL_FILE, TASKS_FILE])
    tasks, indexes = load_tasks(os.path.join(export_dir, TASKS_FILE))
    model_meta = Model.read_meta(export_dir)
    router = routing_generator(model_meta.get("task_generator"), tasks, model_meta["fusion_weights"])
    view = view_from_dict(normalisation["view"])
    weights = hr.get("fusion_weights")
    jobs = scoring_jobs(meta)
    for job in jobs:
        os.makedirs(job_path(stage, job))

    def write(file, rgb):
        np.save(os.path.join(stage, file), network_input([np.ascontiguousarray(rgb)], mean, std))
        return file

    items = []
    for position, sample in enumerate(progress(samples)):
        image = sample.with_view(view).load_image()
        stem = input_stem(position, sample)
        inputs = []
        for task, task_indexes in assign_tiles(image, tasks, indexes, router):
            for index in task_indexes:
                # Zero-padded grid position: a folder's files sort by image, then row-major tile order.
                base = f"{hr['tasks'][task.name]['folder']}/{stem}_r{index.row:03d}c{index.col:03d}"
                entry = {"task": task.name, "tile": index.to_dict()}
                if weights is None:
                    entry["file"] = write(f"{base}.npy", crop(image, index))
                else:
                    views = crop_levels(image, index)
                    entry["file"] = write(f"{base}.npy", views[0])
                    entry["context_files"] = [write(f"{base}_l{level}.npy", views[level]) if weight else None
                                              for level, weight in enumerate(weights[1:], start=1)]
                inputs.append(entry)
        if hr["thumbnail"]:
            file = write(f"{hr['thumbnail']['folder']}/{stem}.npy", WholeImage(hr["thumbnail"]["size"]).views(image)[0])
            inputs.append({"file": file, "task": THUMBNAIL, "tile": None})
        items.append(manifest_entry(sample, dataset_path, stem=stem, inputs=inputs))
    header = {"image_size": hr["image_size"],
              "inputs": {job["name"]: {"folder": job["folder"], "input_shape": model_input_shape(meta, job),
                                       "input_dtype": "float32"}
                         for job in jobs}}
    return items, header


def model_input_shape(meta, job):
    return next(model["input_shape"] for model in meta["models"] if model["lite_mindir"] == job["lite_mindir"])
