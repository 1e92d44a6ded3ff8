"""Deployment of high-resolution (tiled) models: export plan, runner inputs, and scores back to maps.

export.py writes, beside the models (one per input size: the tile size, and the thumbnail size when the
model has a thumbnail branch), a copy of every job's bank in its own folder (``task_<k>/`` and
``thumbnail/``: ``faiss.index`` + ``bank.json``, which holds the task's score normaliser), ``hr_model.json``
and ``tasks.json`` (so the export folder is itself a loadable model: ``HRModel.load(export_dir)``), and
``export.json`` whose ``hr`` entry is all that pre- and post-processing need: every task's tiles, model,
bank, ``num_nn`` and normaliser, the thumbnail, the image size and the stitching settings.

preprocess.py cuts every test image into its tiles, one folder per task, plus its thumbnail, normalised
by ``src.hr_features.network_input`` (the function the training featurizer uses). The C++ runner then
runs once per folder with that folder's bank, and postprocess.py normalises the score grids with each
task's normaliser and builds maps and scores with ``src.hr_inference`` (``compose_anomaly_map``,
``image_score``), so the numbers are eval.py's.

RetrieveTaskGenerator models: preprocess.py routes each tile to its task's folder with the generator
``hr_model.json`` describes (``src.hr_inference.assign_tiles``, as eval.py does), so a task folder holds
the tiles routed to it (possibly none: the runner then skips it).

Multi-resolution fusion (``fusion_weights`` on a ``ds_factors`` plan): preprocess.py also writes each tile's
coarser views (``<tile>_l<k>.npy``, level k, the tile's size, so the same model runs them). The runner
only computes features (a tile's score needs all its levels), and postprocess.py fuses them with
``src.hr_features.fuse_levels`` and scores them in Python with the task's bank.
"""
import os

import numpy as np

from src.deploy import (ExportPlan, ModelInput, input_stem, job_path, manifest_entry, one_source, runner_features,
                        score_grids, verify_files)
from src.errors import InputError
from src.hr_cli import eval_settings
from src.hr_detector import HRPatchCore
from src.hr_features import fuse_levels, network_input, relative_weights, thumbnail_image
from src.hr_inference import (MODEL_FILE, TASKS_FILE, THUMBNAIL, HRModel, assign_tiles, compose_anomaly_map,
                              default_evaluators, evaluate_maps, image_score, load_detectors, routing_generator)
from src.memory_bank import INDEX_FILE, METADATA_FILE
from src.samples import HRSample
from src.tasks import load_tasks
from src.tiling import TileIndex, crop, crop_levels


def fusion_weights(meta):
    """The relative fusion weights of a model whose tiles are fused with coarser views, else None."""
    weights = meta.get("fusion_weights")
    return relative_weights(weights) if weights and any(w != 0 for w in weights[1:]) else None


def export_plan(checkpoint_dir):
    """The ExportPlan of a trained high-resolution model folder (train.py with ``hr``, or HRTrainer)."""
    meta = HRModel.read_meta(checkpoint_dir)
    tasks, indexes = load_tasks(os.path.join(checkpoint_dir, TASKS_FILE))
    detectors = load_detectors(checkpoint_dir, meta)
    sizes = sorted({(index.main_index.width, index.main_index.height) for task in tasks for index in task.indexes})
    if len(sizes) != 1:
        raise InputError(checkpoint_dir, f"tiles of {len(sizes)} sizes {sizes}; an export feeds one tile size")
    tile_size = sizes[0]
    inference = meta["inference"]
    weights = fusion_weights(meta)
    thumbnail = detectors.get(THUMBNAIL)
    inputs = [ModelInput(task.name, "tile", detectors[task.name].patch_config, tile_size[1], tile_size[0],
                         detectors[task.name].bank.dimension) for task in tasks]
    if thumbnail is not None:
        width, height = inference["thumbnail_size"]
        inputs.append(ModelInput(THUMBNAIL, "thumbnail", thumbnail.patch_config, height, width,
                                 thumbnail.bank.dimension))
    copies = [(os.path.join(checkpoint_dir, name), name) for name in (MODEL_FILE, TASKS_FILE)]
    for name, detector in detectors.items():
        copies += [(os.path.join(checkpoint_dir, name, detector.metadata.get("index_file", INDEX_FILE)),
                    f"{name}/{INDEX_FILE}"),
                   (os.path.join(checkpoint_dir, name, METADATA_FILE), f"{name}/{METADATA_FILE}")]

    def job_entry(name, models):
        detector, model = detectors[name], models[name]
        return {"folder": name, "mindir": model["mindir"], "lite_mindir": model["lite_mindir"],
                "output_shape": model["output_shape"], "feature_grid": model["feature_grid"],
                "bank_file": f"{name}/{INDEX_FILE}", "bank_metadata": f"{name}/{METADATA_FILE}",
                "bank_size": len(detector.bank), "num_nn": int(detector.patch_config["anomaly_scorer_num_nn"]),
                "normalizer": detector.metadata.get("normalizer"),
                # A fused tile's score needs all its levels: the runner then only computes features.
                "runner_scores": weights is None}

    def describe(models, files):
        return {
            # What src.hr_features.network_input and HRSample need: the image size, then /255, mean, std.
            "preprocess": {"image_size": list(meta["image_size"]), "mean": list(meta["data"]["mean"]),
                           "std": list(meta["data"]["std"])},
            "hr": {
                "image_size": list(meta["image_size"]), "tile_size": list(tile_size),
                "tile_plan": indexes.params() if hasattr(indexes, "params") else None,
                "routed": any(task.center is not None for task in tasks), "fusion_weights": weights,
                "tasks": {task.name: {**job_entry(task.name, models), "tiles": [i.to_dict() for i in task.indexes]}
                          for task in tasks},
                "thumbnail": None if thumbnail is None else {**job_entry(THUMBNAIL, models),
                                                             "size": list(inference["thumbnail_size"])},
                "thumbnail_merge": inference["thumbnail_merge"], "gaussian_sigma": inference["gaussian_sigma"],
                "image_score_window": inference["image_score_window"],
                "eval_resize": eval_settings(meta, [])["eval_resize"], "thresholds": meta.get("thresholds")}}

    # Models trained before hr_model.json named the category live in OUTPUT_DIR/CATEGORY (train.py).
    category = meta.get("category") or os.path.basename(os.path.abspath(checkpoint_dir))
    return ExportPlan(category, meta, meta["config"], inputs, copies, describe)


def hr_jobs(meta):
    """The scoring jobs of a high-resolution export (see src.deploy.scoring_jobs): tasks, then the thumbnail."""
    hr = meta["hr"]
    jobs = [dict(task, name=name) for name, task in hr["tasks"].items()]
    return jobs + ([dict(hr["thumbnail"], name=THUMBNAIL)] if hr["thumbnail"] else [])


def write_inputs(meta, export_dir, samples, dataset_path, stage, progress):
    """Every test image's tiles (in its task's folder; with fusion, also their coarser views) and thumbnail as
    [1, 3, h, w] float32 files.

    Images are loaded as eval.py loads them (HRSample at the model's image size), and tiles go to tasks as
    eval.py gives them (``assign_tiles`` with the export's tasks.json and hr_model.json). Returns (manifest
    items, manifest header); an item lists its inputs in the order HRModel scores them: task by task, tiles in
    the task's order, then the thumbnail.
    """
    hr, normalisation = meta["hr"], meta["preprocess"]
    mean, std = normalisation["mean"], normalisation["std"]
    verify_files(export_dir, meta, [MODEL_FILE, TASKS_FILE])
    tasks, indexes = load_tasks(os.path.join(export_dir, TASKS_FILE))
    router = routing_generator(HRModel.read_meta(export_dir), tasks)
    weights = hr.get("fusion_weights")
    jobs = hr_jobs(meta)
    for job in jobs:
        os.makedirs(job_path(stage, job))

    def write(file, rgb):
        np.save(os.path.join(stage, file), network_input([np.ascontiguousarray(rgb)], mean, std))
        return file

    items = []
    for position, sample in enumerate(progress(samples)):
        image = HRSample(sample.image_path, image_size=hr["image_size"]).load_image()
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
            file = write(f"{hr['thumbnail']['folder']}/{stem}.npy", thumbnail_image(image, hr["thumbnail"]["size"]))
            inputs.append({"file": file, "task": THUMBNAIL, "tile": None})
        items.append(manifest_entry(sample, dataset_path, stem=stem, inputs=inputs))
    header = {"image_size": hr["image_size"],
              "inputs": {job["name"]: {"folder": job["folder"], "input_shape": model_input_shape(meta, job),
                                       "input_dtype": "float32"}
                         for job in jobs}}
    return items, header


def model_input_shape(meta, job):
    return next(model["input_shape"] for model in meta["models"] if model["lite_mindir"] == job["lite_mindir"])


def file_stem(file):
    return os.path.splitext(os.path.basename(file))[0]


def input_features(folder, entry, job, weights):
    """The runner's [1, D, h, w] features of one input; a fused tile's levels fused as HRFeaturizer does."""
    if "context_files" not in entry:
        return runner_features(folder, file_stem(entry["file"]), job)
    files = [entry["file"]] + entry["context_files"]
    levels = [None if weight == 0 else runner_features(folder, file_stem(file), job)
              for file, weight in zip(files, weights)]
    return fuse_levels(levels, [TileIndex.from_dict(entry["tile"])], weights)


def job_grids(job, entries, export_dir, result_path, weights):
    """(normalised [h, w] score grid per input of ``entries``, "cpp"|"python") of one scoring job."""
    folder, bank_dir = job_path(result_path, job), job_path(export_dir, job)

    def python_scores():
        """Fused tiles, or the runner run without --bank_path: scored with the task's bank."""
        detector = HRPatchCore.load(bank_dir)
        return [detector.patch_scores(input_features(folder, entry, job, weights))[0] for entry in entries]

    raw, source = score_grids(folder, [file_stem(entry["file"]) for entry in entries], job, python_scores)
    # The normaliser is in bank.json: the index is read only when Python scores.
    return HRPatchCore.load(bank_dir, index=False).normalize(np.stack(raw)), source


def anomaly_maps(meta, export_dir, result_path, items):
    """(image scores, [H, W] maps, "cpp"|"python") from the runner's outputs: per-tile score grids -> the
    task's normaliser -> compose_anomaly_map -> image_score, as HRModel.predict does."""
    hr = meta["hr"]
    entries = {job["name"]: [] for job in hr_jobs(meta)}
    for item, _ in items:
        for entry in item["inputs"]:
            entries[entry["task"]].append(entry)
    jobs = [job for job in hr_jobs(meta) if entries[job["name"]]]  # a routed task may have received no tile
    # Only bank.json against export.json: HRPatchCore.load checks an index it reads against bank.json's sha256
    # (the same digest), so an index is hashed once.
    verify_files(export_dir, meta, [job["bank_metadata"] for job in jobs])
    grids, sources = {}, []
    for job in jobs:
        job_scores, source = job_grids(job, entries[job["name"]], export_dir, result_path, hr.get("fusion_weights"))
        grids[job["name"]] = iter(job_scores)
        sources.append(source)
    scores, maps = [], []
    for item, _ in items:
        tile_grids, thumbnail = [], None
        for entry in item["inputs"]:
            grid = next(grids[entry["task"]])
            if entry["tile"] is None:
                thumbnail = grid
            else:
                tile_grids.append((TileIndex.from_dict(entry["tile"]), grid))
        amap = compose_anomaly_map(tile_grids, tuple(hr["image_size"]), thumbnail, hr["thumbnail_merge"],
                                   hr["gaussian_sigma"])
        scores.append(image_score(amap, hr["image_score_window"]))
        maps.append(amap)
    return np.asarray(scores, np.float64), maps, one_source(sources, result_path)


def evaluate(meta, export_dir, result_path, items):
    """(image scores, metrics, score source) with eval.py's evaluators (pixel metrics at eval_resize)."""
    scores, maps, source = anomaly_maps(meta, export_dir, result_path, items)
    size = meta["hr"]["image_size"]
    masks = [HRSample(sample.image_path, sample.mask_path, image_size=size, label=sample.label).load_mask()
             for _, sample in items]
    labels = np.asarray([sample.label for _, sample in items])
    return scores, evaluate_maps(default_evaluators(meta["hr"]["eval_resize"]), scores, labels, maps, masks), source
