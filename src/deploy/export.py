"""export.py's work: a trained model's feature extractor as MINDIR (one model per input size), its banks, export.json.

``export.json`` (written beside the models) is the one description of a deployed model: the input (the image
view, normalisation, each model's input shape), the outputs (feature grid, embedding size), the scoring (the
tile plan, every task's tiles, model, bank, ``num_nn`` and normaliser, the thumbnail, the stitching and
image-score settings, thresholds) and the sha256 of every file. Pre- and post-processing read it instead of
repeating constants (``src/deploy/package.py``, ``inputs.py``, ``outputs.py``).

The export folder holds one model per input size (the tile size, and the thumbnail size when the model has
a thumbnail branch), a copy of every job's bank in its own folder (``task_<k>/`` and ``thumbnail/``:
``faiss.index`` + ``bank.json``, which holds the task's score normaliser), ``model.json`` and ``tasks.json``
(so the export folder is itself a loadable model: ``Model.load(export_dir)``). A 224-pixel model is the
one-tile case: one model, one task folder.
"""
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from src.evaluation.evaluate import evaluation_size
from src.inference.model import MODEL_FILE, TASKS_FILE, THUMBNAIL, Model, job_folder, load_detectors
from src.inference.versions import version_number
from src.patchcore.extractor import build_extractor, check_backbone_checkpoint, extractor_key
from src.patchcore.featurizer import relative_weights
from src.patchcore.memory_bank import INDEX_FILE, METADATA_FILE
from src.tiling.tasks import load_tasks
from src.utils.device import set_device
from src.utils.errors import InputError
from src.utils.io import sha256_of, staged_folder, write_json
from src.utils.logs import logger

SEARCH_FILE = "search.index"   # a job's faiss IndexRefine for the runner, when the model's search is not exact

EXPORT_FILE = "export.json"
FORMAT_VERSION = 2


@dataclass
class ModelInput:
    """One input size the deployed feature extractor sees, and which scoring job (bank) it feeds."""
    job: str               # a task name or "thumbnail"
    role: str              # "tile" or "thumbnail"
    patch_config: dict     # the network (backbone, layers, embedding sizes)
    height: int
    width: int
    dimension: int         # embedding size of the bank(s) the features are scored against


@dataclass
class ExportPlan:
    """What export.py writes for one trained checkpoint, apart from the models themselves."""
    category: str
    metadata: dict         # model.json: seed and backbone_checkpoint_sha256
    config: dict
    inputs: list           # [ModelInput]
    copies: list           # [(source file, path inside the export folder)]
    describe: Callable     # ({job: model entry}, {file: sha256}) -> the kind's own export.json entries
    contents: dict = None  # {path inside the export folder: JSON-ready contents} written instead of copied
    searches: dict = None  # {path inside the export folder: MemoryBank} whose search index the runner searches


def fusion_weights(meta):
    """The relative fusion weights of a model whose tiles are fused with coarser views, else None."""
    weights = meta.get("fusion_weights")
    return relative_weights(weights) if weights and any(w != 0 for w in weights[1:]) else None


def export_plan(checkpoint_dir):
    """The ExportPlan of a trained model folder (train.py, or HRTrainer)."""
    meta = Model.read_meta(checkpoint_dir)
    tasks, indexes = load_tasks(os.path.join(checkpoint_dir, TASKS_FILE))
    detectors = load_detectors(checkpoint_dir, meta)
    for detector in detectors.values():
        detector.bank.use_search(meta["inference"].get("search"))
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
    copies = [(os.path.join(checkpoint_dir, TASKS_FILE), TASKS_FILE)]
    for name, detector in detectors.items():
        folder = job_folder(checkpoint_dir, meta, name)
        copies += [(os.path.join(folder, detector.metadata.get("index_file", INDEX_FILE)), f"{name}/{INDEX_FILE}"),
                   (os.path.join(folder, METADATA_FILE), f"{name}/{METADATA_FILE}")]
    # every bank lands in <job>/ of the export: a taught version's model.json is written without its bank folders
    # (the export's model.json then differs from the model's), a trained model's is copied as it is
    moved = any("folder" in job for job in meta["jobs"].values())
    contents = {MODEL_FILE: dict(meta, jobs={name: {k: v for k, v in job.items() if k != "folder"}
                                             for name, job in meta["jobs"].items()})} if moved else {}
    if not moved:
        copies.insert(0, (os.path.join(checkpoint_dir, MODEL_FILE), MODEL_FILE))

    def job_entry(name, models):
        detector, model = detectors[name], models[name]
        return {"folder": name, "mindir": model["mindir"], "lite_mindir": model["lite_mindir"],
                "output_shape": model["output_shape"], "feature_grid": model["feature_grid"],
                # the runner searches the exact bank, or the model's faster search over it (with the bank inside)
                "bank_file": f"{name}/{INDEX_FILE if detector.bank.search_index is None else SEARCH_FILE}",
                "search": detector.bank.search, "bank_metadata": f"{name}/{METADATA_FILE}",
                "bank_size": len(detector.bank), "num_nn": int(detector.patch_config["anomaly_scorer_num_nn"]),
                "normalizer": detector.metadata.get("normalizer"),
                # A fused tile's score needs all its levels: the runner then only computes features.
                "runner_scores": weights is None}

    def describe(models, files):
        return {
            # What the model's view and src.patchcore.featurizer.network_input need: view, then /255, mean, std.
            "preprocess": {"view": meta["view"], "image_size": list(meta["image_size"]),
                           "mean": list(meta["data"]["mean"]), "std": list(meta["data"]["std"])},
            "hr": {
                "image_size": list(meta["image_size"]), "tile_size": list(tile_size),
                "tile_plan": indexes.params() if hasattr(indexes, "params") else None,
                "routed": any(task.center is not None for task in tasks), "fusion_weights": weights,
                "tasks": {task.name: {**job_entry(task.name, models), "tiles": [i.to_dict() for i in task.indexes]}
                          for task in tasks},
                "thumbnail": None if thumbnail is None else {**job_entry(THUMBNAIL, models),
                                                             "size": list(inference["thumbnail_size"])},
                "thumbnail_merge": inference["thumbnail_merge"], "gaussian_sigma": inference["gaussian_sigma"],
                "image_score": meta["image_score"], "eval_resize": evaluation_size(meta),
                "thresholds": meta.get("thresholds"), "score_normalizer": meta.get("score_normalizer")}}

    searches = {f"{name}/{SEARCH_FILE}": detector.bank for name, detector in detectors.items()
                if detector.bank.search_index is not None}
    return ExportPlan(meta["category"], meta, meta["config"], inputs, copies, describe, contents, searches)


def model_file_names(height, width, role=None):
    """(MindSpore 2.x MINDIR, MINDIR v1 for MindSpore Lite and the C++ runner) for one input size."""
    base = f"patchcore_{height}x{width}" if role is None else f"patchcore_{role}_{height}x{width}"
    return f"{base}.mindir", f"{base}_lite.mindir"


def make_user_files(folder):
    """mindspore.export writes mode 0400 and mkstemp 0600: give every file the usual umask-based mode so
    that users can replace and share the export."""
    umask = os.umask(0)
    os.umask(umask)
    for parent, _, names in os.walk(folder):
        for name in names:
            os.chmod(os.path.join(parent, name), 0o666 & ~umask)


def export_files(folder):
    """Every file below ``folder`` as a '/'-separated relative path, sorted."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
                  for parent, _, names in os.walk(folder) for name in names)


def export_network(extractor, item, stage, taken, file_format):
    """Write the MINDIR pair of one network at one input size into ``stage``; returns its export.json entry.

    ``taken``: model file names already written (a thumbnail of the tiles' size but another network then
    gets ``patchcore_thumbnail_<H>x<W>``)."""
    import mindspore as ms

    from src.deploy.mindir_v1 import convert_mindir_to_v1

    example = ms.Tensor(np.zeros((1, 3, item.height, item.width), np.float32))
    output_shape = [int(v) for v in extractor(example).shape]
    mindir, lite_mindir = next(pair for pair in (model_file_names(item.height, item.width, role)
                                                 for role in (None, item.role))
                               if pair[0] not in taken)
    ms.export(extractor, example, file_name=os.path.join(stage, os.path.splitext(mindir)[0]), file_format=file_format)
    convert_mindir_to_v1(os.path.join(stage, mindir), os.path.join(stage, lite_mindir))
    entry = {"roles": [], "input_shape": [1, 3, item.height, item.width], "input_dtype": "float32", "layout": "NCHW",
             "output_shape": output_shape, "feature_grid": output_shape[2:], "embed_dim": output_shape[1],
             "mindir": mindir, "lite_mindir": lite_mindir}
    logger.info("exported %s and %s: input %s -> patch features %s", mindir, lite_mindir, entry["input_shape"],
                    output_shape)
    return entry


def export_checkpoint(checkpoint_dir, ckpt_file, output_dir, file_format="MINDIR", device=("CPU", 0)):
    """Write ``output_dir`` (replaced as a whole): models, copied banks and export.json. Returns export.json's
    contents. The MindSpore device is set here, after the checkpoint and backbone weights are checked."""
    plan = export_plan(checkpoint_dir)
    check_backbone_checkpoint(plan.metadata, ckpt_file)
    set_device(*device)
    import mindspore as ms

    seed = plan.metadata["seed"]
    extractors, written, by_job, pretrained = {}, {}, {}, None
    with staged_folder(output_dir) as stage:
        for item in plan.inputs:
            # One model per (network, input size): every task's tiles share it, and so does a thumbnail
            # of the tile size and network.
            network = extractor_key(item.patch_config)
            if network not in extractors:
                extractors[network], pretrained = build_extractor(item.patch_config, ckpt_file, seed)
            key = (network, item.height, item.width)
            if key not in written:
                written[key] = export_network(extractors[network], item, stage,
                                              {entry["mindir"] for entry in written.values()}, file_format)
            if written[key]["embed_dim"] != item.dimension:
                raise InputError(checkpoint_dir, f"the {item.role} network's features have dimension "
                                                 f"{written[key]['embed_dim']} but its bank {item.dimension}")
            if item.role not in written[key]["roles"]:
                written[key]["roles"].append(item.role)
            by_job[item.job] = written[key]
        for source, name in plan.copies:
            os.makedirs(os.path.dirname(os.path.join(stage, name)), exist_ok=True)
            shutil.copyfile(source, os.path.join(stage, name))
        for name, contents in (plan.contents or {}).items():
            write_json(os.path.join(stage, name), contents)
        for name, bank in (plan.searches or {}).items():
            faiss.write_index(bank.search_index, os.path.join(stage, name))
        files = {name: sha256_of(os.path.join(stage, name)) for name in export_files(stage)}
        meta = {
            "format_version": FORMAT_VERSION,
            "category": plan.category,
            "source": {"checkpoint_dir": os.path.abspath(checkpoint_dir),
                       "backbone_checkpoint": os.path.abspath(ckpt_file) if ckpt_file else None,
                       "backbone_checkpoint_sha256": plan.metadata.get("backbone_checkpoint_sha256"),
                       "pretrained": pretrained, "seed": seed, "model_version": version_number(plan.metadata)},
            "models": list(written.values()),
            **plan.describe(by_job, files),
            "config": plan.config,
            "files": files,
            "versions": {"mindspore": ms.__version__},
        }
        write_json(os.path.join(stage, EXPORT_FILE), meta)
        make_user_files(stage)
    logger.info("export written to %s", output_dir)
    return meta
