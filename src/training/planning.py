"""What a training run will do, decided before any bank is trained: the validation set, the jobs (one per task,
plus the thumbnail branch) with their views, each job's feature grid and fingerprint, and the runtime's
resident memory measured on blank inputs (for the memory estimate)."""
import json
import logging

import numpy as np
import psutil

from src.backbones.networks import feature_grid
from src.inference.model import THUMBNAIL, check_image_size, make_featurizer
from src.patchcore.aggregation import to_patch_rows
from src.patchcore.sampling import build_sampler
from src.tiling.plan import WholeImage
from src.tiling.tasks import assign_tiles
from src.training.jobs import FINGERPRINT_VERSION, Job, sha256_json, synthesizer_config
from src.training.validation import LabelledItem, build_validation_set
from src.utils.errors import InputError


def checked_inputs(samples, val_samples, image_size):
    """(samples, labelled items), checked; every image is read once now, so a bad one fails before anything is
    written."""
    samples = list(samples)
    if not samples:
        raise InputError("train_samples", "no training samples")
    labelled = [LabelledItem(sample) for sample in val_samples or []]
    for sample in samples + [item.sample for item in labelled]:
        check_image_size(sample.load_image(), image_size)
    return samples, labelled


def training_items(samples, labelled, validation, seed, tiles_per_image):
    """(validation items, training positions): HiAD's validation set of ``samples`` (``src/training/validation.py``)
    as ``validation`` (``ValidationSettings``; None: none) sets it, then the ``labelled`` items; every sample trains
    unless held out."""
    if validation is None:
        return list(labelled), list(range(len(samples)))
    max_patches = validation.max_patch_number
    chosen = build_validation_set(samples, validation.synthesizers, float(validation.val_sample_ratio), seed,
                                  float(validation.anomaly_ratio if validation.synthesizers else 0.0),
                                  None if max_patches is None else max(1, max_patches // tiles_per_image),
                                  validation.val_images, validation.folds)
    return chosen.items + list(labelled), chosen.train_indices


def plan_jobs(model_plan, patch_config, train_positions, items, say, augment=()):
    """{name: Job} for the tasks of ``model_plan`` (and its thumbnail branch): training views from the images at
    ``train_positions`` and their ``augment`` copies, validation views of every item (none for an untiled plan: its
    scores stay raw); Retrieve tasks get the validation tiles routed to them."""
    keep, tasks, thumbnail = set(train_positions), model_plan.tasks, model_plan.thumbnail
    items = items if model_plan.tiled else []
    routed = {}
    if any(task.center is not None for task in tasks):
        for position, item in enumerate(items):
            for task, routed_indexes in assign_tiles(item.load()[0], tasks, model_plan.plan,
                                                     model_plan.task_generator):
                routed.setdefault(task.name, []).extend((position, index) for index in routed_indexes)
    jobs = {}
    for task in tasks:
        train = tuple((s, index) for s, index in task.training_tiles(len(model_plan.samples)) if s in keep)
        if not train:
            raise InputError(task.name, "all its training tiles come from held-out validation images; "
                                        "lower val_sample_ratio")
        if task.center is None:
            val = tuple((position, index) for position in range(len(items)) for index in task.indexes)
        else:
            val = tuple(routed.get(task.name, []))
            if items and not val:
                say("Warning: no validation tile is routed to %s: its scores stay unnormalised", task.name,
                    level=logging.WARNING)
        jobs[task.name] = Job(task.name, patch_config, train, val, model_plan.fusion_weights, augment)
    if thumbnail is not None:
        whole = WholeImage(thumbnail.size)
        jobs[THUMBNAIL] = Job(THUMBNAIL, thumbnail.patch_config(patch_config),
                              tuple((s, whole) for s in train_positions),
                              tuple((position, whole) for position in range(len(items))), augment=augment)
    return jobs


def job_grid(job):
    """The job's feature grid (h, w), from its input size and the backbone's stride."""
    patch = job.patch_config
    return feature_grid(patch["backbone_name"], patch["layers_to_extract_from"], job.input_size)


def job_fingerprints(jobs, identities, items, meta):
    """{name: fingerprint}: everything each job's bank depends on (``FINGERPRINT_VERSION``, the training images'
    ``identities`` (``sample_identity``: content and size), the validation items, the model's view, size, seed, weights, input normalisation, batch size and
    fusion weights from ``meta``, and the job itself)."""
    run_identity = {"version": FINGERPRINT_VERSION, "samples": identities,
                    "validation": [item.describe() | {"synthesizer_config": synthesizer_config(item)}
                                   for item in items],
                    **{k: meta[k] for k in ("view", "image_size", "seed", "backbone_checkpoint_sha256", "data",
                                            "batch_size", "fusion_weights")}}
    return {name: sha256_json({"run": run_identity, "job": job.describe()}) for name, job in jobs.items()}


def probe_runtime(jobs, grids, meta, image_size, batch_size, pre_ckpt_path, extractors):
    """The runtime's resident memory (MindSpore, model, library buffers), measured after running one batch of
    blank tiles (and a blank thumbnail) through each network; checks every job's feature grid on the way."""
    blank = np.zeros((image_size[1], image_size[0], 3), np.uint8)
    measured = set()
    for name, job in jobs.items():
        key = (json.dumps(job.patch_config, sort_keys=True), job.input_size)
        if key not in measured:
            measured.add(key)
            featurizer = make_featurizer(job.patch_config, meta, pre_ckpt_path, extractors, None)
            features = next(featurizer.view_batches([(blank, job.train_views[0][1])] * batch_size))
            if tuple(features.shape[2:]) != grids[name]:
                raise RuntimeError(f"{name}: the network gives a {features.shape[2:]} feature grid, "
                                   f"not the {grids[name]} its stride predicts")
            # the projection's matrix product makes BLAS allocate its per-thread buffers: count them too
            rows = to_patch_rows(features)[0]
            build_sampler(job.patch_config["sampler"], job.patch_config["percentage"]).projection(
                rows.shape[1]).project(rows)
    return psutil.Process().memory_info().rss
