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

Not exportable (refused with an InputError): multi-resolution fusion (the runner sees one tile, not its
coarser surroundings) and RetrieveTaskGenerator models (tiles are routed to tasks at inference by a
descriptor the export does not carry, so the per-task folders cannot be fixed by the export).
"""
import os

import numpy as np

from src.deploy import (ExportPlan, ModelInput, input_stem, job_path, manifest_entry, one_source, score_grids,
                        verify_files)
from src.errors import InputError
from src.hr_cli import eval_settings
from src.hr_detector import HRPatchCore
from src.hr_features import network_input, thumbnail_image
from src.hr_inference import (MODEL_FILE, TASKS_FILE, THUMBNAIL, HRModel, compose_anomaly_map, default_evaluators,
                              evaluate_maps, image_score, load_detectors)
from src.memory_bank import INDEX_FILE, METADATA_FILE
from src.samples import HRSample
from src.tasks import load_tasks
from src.tiling import TileIndex, crop


def check_exportable(checkpoint_dir, meta, tasks):
    """An InputError for the models whose runner outputs could not reproduce eval.py (module docstring)."""
    weights = meta.get("fusion_weights") or []
    if any(w != 0 for w in weights[1:]):
        raise InputError(checkpoint_dir, f"multi-resolution fusion (fusion_weights {weights}) cannot be exported: "
                                         "the C++ runner sees each tile alone, not its coarser surroundings")
    if any(task.center is not None for task in tasks):
        raise InputError(checkpoint_dir, "RetrieveTaskGenerator models cannot be exported: their tiles are routed "
                                         "to tasks at inference, so the per-task runner inputs are not fixed")


def export_plan(checkpoint_dir):
    """The ExportPlan of a trained high-resolution model folder (train.py with ``hr``, or HRTrainer)."""
    meta = HRModel.read_meta(checkpoint_dir)
    tasks, indexes = load_tasks(os.path.join(checkpoint_dir, TASKS_FILE))
    check_exportable(checkpoint_dir, meta, tasks)
    detectors = load_detectors(checkpoint_dir, meta)
    sizes = sorted({(index.main_index.width, index.main_index.height) for task in tasks for index in task.indexes})
    if len(sizes) != 1:
        raise InputError(checkpoint_dir, f"tiles of {len(sizes)} sizes {sizes}; an export feeds one tile size")
    tile_size = sizes[0]
    inference = meta["inference"]
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
                "normalizer": detector.metadata.get("normalizer")}

    def describe(models, files):
        return {
            # What src.hr_features.network_input and HRSample need: the image size, then /255, mean, std.
            "preprocess": {"image_size": list(meta["image_size"]), "mean": list(meta["data"]["mean"]),
                           "std": list(meta["data"]["std"])},
            "hr": {
                "image_size": list(meta["image_size"]), "tile_size": list(tile_size),
                "tile_plan": indexes.params() if hasattr(indexes, "params") else None,
                "tasks": {task.name: {**job_entry(task.name, models), "tiles": [i.to_dict() for i in task.indexes]}
                          for task in tasks},
                "thumbnail": None if thumbnail is None else {**job_entry(THUMBNAIL, models),
                                                             "size": list(inference["thumbnail_size"])},
                "thumbnail_merge": inference["thumbnail_merge"], "gaussian_sigma": inference["gaussian_sigma"],
                "image_score_window": inference["image_score_window"],
                "eval_resize": eval_settings(meta, [])["eval_resize"], "thresholds": meta.get("thresholds")}}

    # hr_model.json does not name the category: train.py writes the model to OUTPUT_DIR/CATEGORY.
    return ExportPlan(os.path.basename(os.path.abspath(checkpoint_dir)), meta, meta["config"], inputs, copies,
                      describe)


def hr_jobs(meta):
    """The scoring jobs of a high-resolution export (see src.deploy.scoring_jobs): tasks, then the thumbnail."""
    hr = meta["hr"]
    jobs = [dict(task, name=name) for name, task in hr["tasks"].items()]
    return jobs + ([dict(hr["thumbnail"], name=THUMBNAIL)] if hr["thumbnail"] else [])


def write_inputs(meta, export_dir, samples, dataset_path, stage, progress):
    """Every test image's tiles (in its task's folder) and thumbnail as [1, 3, h, w] float32 files.

    Images are loaded as eval.py loads them (HRSample at the model's image size). Returns (manifest items,
    manifest header); an item lists its inputs in the order HRModel scores them: task by task, tiles in the
    task's order, then the thumbnail.
    """
    hr, normalisation = meta["hr"], meta["preprocess"]
    mean, std = normalisation["mean"], normalisation["std"]
    tiles = {name: [TileIndex.from_dict(d) for d in task["tiles"]] for name, task in hr["tasks"].items()}
    jobs = hr_jobs(meta)
    for job in jobs:
        os.makedirs(job_path(stage, job))
    items = []
    for position, sample in enumerate(progress(samples)):
        image = HRSample(sample.image_path, image_size=hr["image_size"]).load_image()
        stem = input_stem(position, sample)
        inputs = []
        for name, indexes in tiles.items():
            for index in indexes:
                # Zero-padded grid position: a folder's files sort by image, then row-major tile order.
                file = f"{hr['tasks'][name]['folder']}/{stem}_r{index.row:03d}c{index.col:03d}.npy"
                np.save(os.path.join(stage, file), network_input([crop(image, index)], mean, std))
                inputs.append({"file": file, "task": name, "tile": index.to_dict()})
        if hr["thumbnail"]:
            file = f"{hr['thumbnail']['folder']}/{stem}.npy"
            np.save(os.path.join(stage, file),
                    network_input([thumbnail_image(image, hr["thumbnail"]["size"])], mean, std))
            inputs.append({"file": file, "task": THUMBNAIL, "tile": None})
        items.append(manifest_entry(sample, dataset_path, stem=stem, inputs=inputs))
    header = {"image_size": hr["image_size"],
              "inputs": {job["name"]: {"folder": job["folder"], "input_shape": model_input_shape(meta, job),
                                       "input_dtype": "float32"}
                         for job in jobs}}
    return items, header


def model_input_shape(meta, job):
    return next(model["input_shape"] for model in meta["models"] if model["lite_mindir"] == job["lite_mindir"])


def anomaly_maps(meta, export_dir, result_path, items):
    """(image scores, [H, W] maps, "cpp"|"python") from the runner's outputs: per-tile score grids -> the
    task's normaliser -> compose_anomaly_map -> image_score, as HRModel.predict does."""
    hr = meta["hr"]
    jobs = hr_jobs(meta)
    # Only bank.json against export.json: HRPatchCore.load checks each index against bank.json's sha256 (the
    # same digest), so the indexes are hashed once.
    verify_files(export_dir, meta, [job["bank_metadata"] for job in jobs])
    stems = {job["name"]: [] for job in jobs}
    for item, _ in items:
        for entry in item["inputs"]:
            stems[entry["task"]].append(os.path.splitext(os.path.basename(entry["file"]))[0])
    grids, sources = {}, []
    for job in jobs:
        detector = HRPatchCore.load(job_path(export_dir, job))
        # Python scoring (runner run without --bank_path) with the task's bank: [1, D, h, w] -> [h, w].
        raw, source = score_grids(job_path(result_path, job), stems[job["name"]], job,
                                  lambda d=detector: lambda features: d.patch_scores(features)[0])
        grids[job["name"]] = iter(detector.normalize(np.stack(raw)))
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
