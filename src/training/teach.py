"""Teach a trained model what is OK without retraining: normal images (reviewed false alarms, new good images of the
line) join its banks, and its normalisers and thresholds are derived again, as a new model version.

    summary = teach_ok("output/widget", ["reviewed/ok_017.png", ...])   # a new version, made the active one
    activate("output/widget", 1)                                         # back (src/inference/versions.py)

An update, in order, under the model folder's lock:
1. **The model's inputs, rebuilt and verified.** From the active model.json: the config, the training images, the
   validation set and the jobs, exactly as training planned them, and the images earlier versions taught; every
   bank's training fingerprint must come out the same (a training image changed or moved is an error: validation
   would be scored on other images), and every earlier taught image must still have its sha256.
2. **The new images, checked** before anything is written: readable, of a size the model was trained on, not given
   twice, not taught already.
3. **Per job** (each task, the thumbnail): the new images' views (and their ``data.train_augment`` copies) through
   the network; the bank continued from its entries (``PatchCoreDetector.extend``: for the greedy coreset, only
   patches farther from the bank than its entries lie from each other are added); every validation view scored
   again against the grown bank and the job's normaliser fitted again. The new images join the validation set as
   training images do (up to ``val_images`` of them, each as it is and with a synthetic defect, scored without
   its own entries): so the thresholds know the surface they taught.
4. **The thresholds** from the validation images, by the model's own policies (``postprocess``).
5. **The version**: the banks under ``versions/<n>/``, its model.json as ``versions/<n>.json`` (with
   ``model_version``: number, parent and the sha256 of its model.json, the images added with their sha256), then
   model.json replaced by it. A failure before the last step leaves the active model as it was; the same images
   in the same order give the same bytes (no clock in a version's files: the timings go to
   ``logs/teach_v<n>.json``).
"""
import copy
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from src.config.schema import Config
from src.data.sample import Sample
from src.inference.model import (MODEL_FILE, TASKS_FILE, THUMBNAIL, Model, job_folder, make_featurizer,
                                 make_featurizers, recorded_checkpoint)
from src.inference.versions import (VERSIONS_DIR, archived_numbers, version_file, version_folder, version_lock,
                                    version_number, write_active)
from src.patchcore.extractor import check_backbone_checkpoint
from src.patchcore.detector import PatchCoreDetector
from src.tiling.plan import WholeImage
from src.tiling.tasks import assign_tiles, load_tasks
from src.training.jobs import SPILL_FILE, grouped_views, job_views, sample_identity, score_validation, sha256_json
from src.training.manifest import bank_digest
from src.training.model_plan import plan_model
from src.training.planning import job_fingerprints, job_grid, plan_jobs, training_items
from src.training.thresholds import fit_thresholds, stored_grids
from src.training.validation import LabelledItem, build_validation_set
from src.utils.errors import InputError
from src.utils.io import json_bytes, sha256_of, staged_folder, write_bytes, write_json
from src.utils.logs import file_logging, say_to

logger = logging.getLogger("patchcore.teach")
# In a taught bank's fingerprint: bumped when an update would give other banks for the same parent and images.
TEACH_FORMAT = 1


@dataclass(frozen=True)
class Lineage:
    """A model's inputs as training planned them, plus the images its versions taught: ``samples`` (training images,
    then taught ones, seen through the model's view: a taught image's position is its bank entries' source),
    ``items`` (the validation set), ``jobs`` (with views of every item) and each taught image's sha256."""
    config: Config
    plan: object          # the ModelPlan
    samples: list
    train_positions: list
    items: list
    jobs: dict
    taught: list          # [{"path", "sha256", "version"}] of model.json, in order

    @property
    def view(self):
        return self.plan.view

    def with_taught(self, samples, records, seed, say):
        """This lineage and the new ``samples`` (Samples of files, seen through the view) with their ``records``."""
        first = len(self.samples)
        items = self.items + taught_items(samples, first, self.config.val_config, seed)
        jobs = plan_jobs(self.plan, self.config.patch.to_dict(), self.train_positions, items, say,
                         self.config.data.train_augment)
        return replace(self, samples=self.samples + list(samples), items=items, jobs=jobs,
                       taught=self.taught + list(records))


def taught_items(samples, first, validation, seed):
    """Validation items of taught ``samples`` (positions from ``first``): as training draws them from its images
    (``val_images`` at most, each as it is and with a synthetic defect), each scored without its own entries."""
    if validation is None:
        return []
    chosen = build_validation_set(samples, validation.synthesizers, 0, seed,
                                  float(validation.anomaly_ratio if validation.synthesizers else 0.0),
                                  val_images=validation.val_images)
    return [replace(item, source_index=first + item.source_index) for item in chosen.items]


def _verified(record, what):
    """The path of model.json's ``record`` of a file ({"path", "sha256", ...}), which must still have its sha256."""
    path = record["path"]
    if not os.path.isfile(path) or sha256_of(path) != record["sha256"]:
        raise InputError(path, f"{what} missing or changed since (sha256 {record['sha256'][:16]}...): the model's "
                               "validation cannot be scored again")
    return path


def rebuild(model_dir, meta, say):
    """The ``Lineage`` of the model ``meta`` (an active or archived model.json of ``model_dir``), verified against its
    banks' training fingerprints and taught images' sha256."""
    meta_file = os.path.join(model_dir, MODEL_FILE)
    paths = [os.path.abspath(path) for path in meta["train_samples"]]   # models before absolute paths: the cwd's
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(path, "training image not found: teaching scores the validation images again (a model "
                                   "trained from arrays in memory cannot be taught)")
    config = Config.from_dict(copy.deepcopy(meta["config"]), meta_file)
    tasks, _ = load_tasks(os.path.join(model_dir, TASKS_FILE))
    plan = plan_model(config, [Sample(path) for path in paths], meta["seed"], meta["category"], tasks)
    view = plan.view
    records = (meta.get("validation") or {}).get("items", [])
    labelled = [LabelledItem(Sample(_verified(record, "labelled validation image"), record.get("mask"),
                                    label=record["label"], defect_type=record.get("defect_type"), view=view))
                for record in records if "path" in record]
    items, positions = training_items(plan.samples, labelled, config.val_config, meta["seed"], len(plan.plan))
    jobs = plan_jobs(plan, config.patch.to_dict(), positions, items, say, config.data.train_augment)
    trained = job_fingerprints(jobs, [sample_identity(sample) for sample in plan.samples], items, meta)
    for name, job in meta["jobs"].items():
        if trained.get(name) != job.get("trained_fingerprint", job["fingerprint"]):
            raise InputError(job_folder(model_dir, meta, name), "the training images or settings differ from those "
                                                                "this bank was trained with (an image changed?)")
    lineage = Lineage(config, plan, list(plan.samples), positions, items, jobs, [])
    for number in sorted({record["version"] for record in meta.get("taught", [])}):
        group = [record for record in meta["taught"] if record["version"] == number]
        lineage = lineage.with_taught([Sample(_verified(record, "taught image"), view=view) for record in group],
                                      group, meta["seed"], say)
    expected = [{key: value for key, value in record.items() if key != "score"} for record in records]
    if [item.describe() for item in lineage.items] != expected:
        raise InputError(meta_file, "the validation set rebuilt from model.json differs from the one recorded")
    return lineage


def checked_images(images, lineage):
    """[(Sample seen through the view, {"path", "sha256"})] of the new ``images`` (paths or Samples of files); each
    must be readable, of a size the model was trained on, given once and not taught already."""
    sizes = {Sample(sample.image).original_size() for sample in lineage.samples[:len(lineage.plan.samples)]}
    known = {record["sha256"]: record["version"] for record in lineage.taught}
    checked, seen = [], {}
    for image in images:
        path = image.image_path if isinstance(image, Sample) else os.fspath(image)
        if not isinstance(path, str):
            raise InputError("images", "teaching records every image's file: give paths, not arrays")
        sample = Sample(os.path.abspath(path), view=lineage.view)
        size = Sample(sample.image).original_size()
        if size not in sizes:
            raise InputError(path, f"image is {size[0]}x{size[1]}, but the model was trained on "
                                   f"{' or '.join(f'{w}x{h}' for w, h in sorted(sizes))} images")
        sample.load_image()   # unreadable or truncated: an error now, before anything is written
        digest = sha256_of(path)
        if digest in seen:
            raise InputError(path, f"the same image as {seen[digest]}: give each image once")
        if digest in known:
            raise InputError(path, f"already taught (version {known[digest]})")
        seen[digest] = path
        checked.append((sample, {"path": os.path.abspath(path), "sha256": digest}))
    if not checked:
        raise InputError("images", "no images to teach")
    return checked


def taught_views(lineage, positions):
    """{job name: [(position, view)]} of the images at ``positions``: the tiles each task scores of them (routed
    tasks: those routed to it) and the thumbnail's whole image."""
    views = {}
    plan = lineage.plan
    routed = any(task.center is not None for task in plan.tasks)
    for position in positions:
        image = lineage.samples[position].load_image() if routed else None   # a fixed plan needs no pixels
        for task, indexes in assign_tiles(image, plan.tasks, plan.plan, plan.task_generator):
            views.setdefault(task.name, []).extend((position, index) for index in indexes)
    if plan.thumbnail is not None:
        views[THUMBNAIL] = [(position, WholeImage(plan.thumbnail.size)) for position in positions]
    return views


def teach_job(lineage, job, detector, views, featurizer, folder, log):
    """Continue ``detector``'s bank with ``views`` of the taught images (``folder`` is created, their features spilled
    into it meanwhile). Returns the extension's statistics."""
    groups = grouped_views(views)
    grid = job_grid(job)
    copies = 1 + len(job.augment)
    view_sources = [position for position, indexes in groups for _ in range(copies) for _ in indexes]
    os.makedirs(folder)
    with tempfile.TemporaryDirectory(prefix=".spill-", dir=folder) as scratch:
        stats = detector.extend(featurizer.view_batches(job_views(lambda p: lineage.samples[p].load_image(), groups,
                                                                  job.augment)),
                                len(view_sources) * grid[0] * grid[1], os.path.join(scratch, SPILL_FILE),
                                np.repeat(view_sources, grid[0] * grid[1]))
    log.info("%s: %d of %d new patches added (bank %d, spacing %s)", job.name, stats["added"], stats["num_patches"],
             stats["bank_size"], stats["spacing"])
    return stats


def teach_ok(model_dir, images, pre_ckpt_path=None, extractors=None, activate=True):
    """Add the normal ``images`` (paths or Samples of image files) to the active version of the model in
    ``model_dir`` as a new version, and make it the active one unless ``activate`` is False (a candidate a person
    activates later: the review page) (module docstring). ``pre_ckpt_path``: the backbone
    weights (default: the checkpoint model.json records; checked by sha256). Returns the update's summary (also ``logs/teach_v<n>.json``)."""
    started = time.perf_counter()
    with version_lock(model_dir):
        meta = Model.read_meta(model_dir)
        pre_ckpt_path = recorded_checkpoint(meta, model_dir, pre_ckpt_path)
        check_backbone_checkpoint(meta, pre_ckpt_path)
        number = max(archived_numbers(model_dir) + [version_number(meta)]) + 1
        say = say_to(logger)
        lineage = rebuild(model_dir, meta, say)   # every check before anything is written, the log file included
        new = checked_images(images, lineage)
        first = len(lineage.samples)
        taught = lineage.with_taught([sample for sample, _ in new],
                                     [dict(record, version=number) for _, record in new], meta["seed"], say)
        logs = os.path.join(model_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        with file_logging(logger, os.path.join(logs, f"teach_v{number}.log")):
            new_meta = _version_meta(meta, number, model_dir, new, taught)
            stats = _update(model_dir, meta, new_meta, taught, range(first, len(taught.samples)), number,
                            pre_ckpt_path, extractors or {}, say)
            data = json_bytes(new_meta)
            if not archived_numbers(model_dir):   # the trained model becomes version 1's file
                with open(os.path.join(model_dir, MODEL_FILE), "rb") as f:
                    write_bytes(version_file(model_dir, version_number(meta)), f.read())
            write_bytes(version_file(model_dir, number), data)
            if activate:
                write_active(model_dir, data)
            summary = _summary(meta, new_meta, number, new, stats, time.perf_counter() - started)
            summary["active"] = activate
            if not activate:
                summary["line"] += f"; not active (teach.py --activate {number})"
            say(summary["line"])
    write_json(os.path.join(logs, f"teach_v{number}.json"), summary)
    return summary


def _version_meta(meta, number, model_dir, new, lineage):
    """The new version's model.json before its banks and thresholds: the parent's, with its lineage."""
    new_meta = copy.deepcopy(meta)
    new_meta["model_version"] = {
        "number": number,
        "parent": {"number": version_number(meta), "sha256": sha256_of(os.path.join(model_dir, MODEL_FILE))},
        "added": [record for _, record in new]}
    new_meta["taught"] = lineage.taught
    if new_meta.get("validation"):
        new_meta["validation"]["items"] = [item.describe() for item in lineage.items]
    return new_meta


def _update(model_dir, meta, new_meta, lineage, positions, number, pre_ckpt_path, extractors, say):
    """Every job's bank continued with the taught images at ``positions`` into ``versions/<number>/``, and
    ``new_meta``'s jobs and thresholds set. Returns {job: the extension's statistics}."""
    views = taught_views(lineage, positions)
    detectors, stats = {}, {}
    added = [record["sha256"] for record in new_meta["model_version"]["added"]]
    with staged_folder(os.path.join(model_dir, VERSIONS_DIR, str(number))) as stage:
        for name in tqdm(lineage.jobs, desc="teach", unit="job", disable=None):
            job, parent = lineage.jobs[name], meta["jobs"][name]
            detector = PatchCoreDetector.load(job_folder(model_dir, meta, name))
            featurizer = make_featurizer(job.patch_config, meta, pre_ckpt_path, extractors, job.fusion_weights)
            stats[name] = teach_job(lineage, job, detector, views.get(name, []), featurizer,
                                    os.path.join(stage, name), logger)
            fingerprint = sha256_json({"parent": parent["fingerprint"], "taught": added, "format": TEACH_FORMAT})
            metadata = {"job": name, "fingerprint": fingerprint, "sources": detector.metadata["sources"]}
            if job.val_views:
                # an update runs in one process: its search may use every core (the same bytes on the same machine)
                metadata["validation_sha256"] = score_validation(lineage.items, job, detector, featurizer,
                                                                 os.path.join(stage, name), logger, None)
            detector.save(os.path.join(stage, name), metadata)
            detectors[name] = detector
            new_meta["jobs"][name] = dict(parent, fingerprint=fingerprint, folder=f"{version_folder(number)}/{name}",
                                          trained_fingerprint=parent.get("trained_fingerprint", parent["fingerprint"]),
                                          bank_size=len(detector.bank), **bank_digest(stage, name))
        if lineage.items:
            _thresholds(new_meta, lineage, detectors, stage, pre_ckpt_path, extractors, say)
    return stats


def _thresholds(meta, lineage, detectors, stage, pre_ckpt_path, extractors, say):
    """``meta``'s thresholds, score normaliser and validation scores from the lineage's validation items: composed
    from the jobs' stored grids (tiled, a policy without weights), else scored by the model."""
    plan = lineage.plan
    model = Model(meta, plan.tasks, plan.plan, detectors, {}, plan.task_generator)
    stored = None
    if plan.tiled and not model.scorer.policy.needs_weights:
        stored = stored_grids(lineage.jobs, lineage.items, detectors, plan.plan,
                              {name: os.path.join(stage, name) for name in lineage.jobs})
    else:
        model.featurizers = make_featurizers(detectors, meta, pre_ckpt_path, extractors)
    fit_thresholds(model, lineage.items, stored, lineage.config.data.batch_size, lineage.config.decision,
                   lineage.config.val_config, meta, say)


def _summary(meta, new_meta, number, new, stats, seconds):
    """The update's summary: JSON-ready, with its one line."""
    old, now = meta.get("thresholds") or {}, new_meta.get("thresholds") or {}

    def change(key):
        if old.get(key) is None and now.get(key) is None:
            return None
        return f"{key} {old.get(key, float('nan')):.4g} -> {now.get(key, float('nan')):.4g}"

    banks = ", ".join(f"{name} +{s['added']} patches ({meta['jobs'][name]['bank_size']} -> {s['bank_size']})"
                      for name, s in stats.items())
    moved = "; ".join(text for text in (change("image"), change("review"), change("pixel")) if text) or \
        "no thresholds (trained without validation)"
    line = (f"version {number} (from version {version_number(meta)}): {len(new)} image(s) taught; {banks}; "
            f"thresholds: {moved}; {seconds:.1f} s")
    return {"version": number, "parent": version_number(meta), "added": new_meta["model_version"]["added"],
            "jobs": stats, "thresholds": {"before": meta.get("thresholds"), "after": new_meta.get("thresholds")},
            "seconds": round(seconds, 3), "line": line}
