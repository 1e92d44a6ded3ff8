"""HiAD-style high-resolution trainer: one PatchCore memory bank per task; the facade over the training parts.

    trainer = HRTrainer(batch_size=4, tasks=tasks, detector_class=HRPatchCore, config=config,
                        checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=indexes)
    trainer.train(train_samples, workers=None, val_config=None)
    trainer.inference(test_samples, evaluators=[...])            # table printed, results + pictures saved
    scores, maps = trainer.inference(test_samples, return_results_only=True)

Training writes, under ``checkpoint_root``: ``tasks.json`` (tile plan and tasks), one folder per task
(``task_<k>/faiss.index`` + ``bank.json``, and ``validation.npz`` with the task's raw validation scores),
``thumbnail/`` for the thumbnail branch, and last ``model.json``: the model is complete only once that
file exists. Logs go to ``log_root``: ``train.log`` (main) and ``<task>.log`` per task.

The parts, in the order a run uses them: ``planning`` (validation set, jobs, feature grids, fingerprints, the
runtime's memory), ``manifest`` (the model folder: banks kept on a resume, leftovers), a runner (``runner``:
where the jobs run; this machine by default, ``runner=`` for another), each job's result written as it arrives
(``jobs.JobResult``), then ``thresholds`` and ``model.json``.

A job reads its images itself, one at a time, and streams their features into its bank
(``src/patchcore/detector.py``), so a worker's memory is the runtime plus one job's projected features, coreset
working memory and one batch; that estimate is printed before training, the measured peak RSS after.

Resume: every task folder is written through a staging folder and appears only when complete. Its
``bank.json`` records a fingerprint of everything the bank depends on (config, seed, backbone weights,
training images' contents, tiles, validation split) and the sha256 of the index and validation scores. A
rerun after a crash keeps every task whose bank verifies with the same fingerprint and trains the rest;
training is deterministic, so the result equals an uninterrupted run.

Bad input (an unreadable image, an image of the wrong size, inconsistent settings) is found before
anything is written.
"""
import logging
import os
import platform
import time

import numpy as np

from src.backbones.networks import feature_strides
from src.config.hr import check_thumbnail, check_val_config
from src.config.loader import load_config
from src.config.schema import Config
from src.data.sample import Resize
from src.evaluation.evaluate import run_inference
from src.inference.model import (MODEL_FILE, MODEL_FORMAT, MODEL_VERSION, TASKS_FILE, Model, check_image_size,
                                 make_featurizers)
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.scoring import build_image_score
from src.tiling.plan import MultiResolutionHRImageSpliter, check_fusion_weights
from src.tiling.tasks import RetrieveTaskGenerator, load_tasks, save_tasks
from src.training.jobs import TrainingRun, sample_identity
from src.training.manifest import bank_digest, complete_jobs, prepare_model_folder, remove_stale_jobs
from src.training.memory import job_cost, job_estimate, report_memory, report_peak
from src.training.planning import job_fingerprints, job_grid, plan_jobs, probe_runtime, validation_set
from src.training.runner import JobNeeds, LocalRunner
from src.training.thresholds import model_thresholds, stored_grids, validation_results
from src.training.validation import LabelledItem
from src.utils.device import set_device
from src.utils.errors import InputError
from src.utils.io import sha256_of, write_json
from src.utils.logs import file_logging

logger = logging.getLogger("patchcore.hr")         # the main log file; console lines are printed (say)


def say(message, *args, level=logging.INFO):
    """Print a line and write it to the main log."""
    text = message % args if args else message
    print(text, flush=True)
    logger.log(level, text)


def hiad_config(config):
    """A ``Config`` from HiAD-style ``{"patch": ..., "data": ..., "postprocess": ...}`` sections over the defaults of
    configs/patchcore.yaml (HiAD's ``patch_size`` entry is ignored: the tiles come from the plan)."""
    if isinstance(config, Config):
        return config
    raw = load_config(None).to_dict()
    config = dict(config or {})
    unknown = set(config) - {"patch", "data", "postprocess", "thumbnail"}
    if unknown:
        raise InputError("config", f"unknown sections {sorted(unknown)}")
    for section in ("patch", "data", "postprocess"):
        given = {k: v for k, v in (config.get(section) or {}).items() if k != "patch_size"}
        if set(given) - set(raw[section]):
            raise InputError("config", f"unknown {section} entries {sorted(set(given) - set(raw[section]))}")
        raw[section] = {**raw[section], **given}
    return Config.from_dict(raw, "config")


def image_size_of(indexes):
    """(w, h) of the plan: its parameter, or the extent of its tiles."""
    if isinstance(indexes, MultiResolutionHRImageSpliter):
        return indexes.image_size
    return (max(i.main_index.x + i.main_index.width for i in indexes),
            max(i.main_index.y + i.main_index.height for i in indexes))


class HRTrainer:
    """Trains and applies a high-resolution model (module docstring).

    ``tasks``: from a task generator; ``indexes``: the tile plan (default: the tasks' tiles);
    ``config``: a ``Config``, or HiAD-style ``{"patch": {...}, "thumbnail": {"thumbnail_size": ..., ...}}`` plus
    optional ``data``/``postprocess`` sections, defaults from configs/patchcore.yaml; ``thumbnail``: the thumbnail
    branch's settings when ``config`` is a ``Config`` (HiAD's ``config["thumbnail"]``); ``fusion_weights``: one per
    ds_factor of a multi-resolution plan; ``pre_ckpt_path``: backbone weights (None: seeded random);
    ``task_generator``: for Retrieve tasks, the generator used (routes test tiles; default: a
    RetrieveTaskGenerator with the default descriptor); ``image_score``: the image-score policy, a name or
    {"policy": name, parameter: value} (``src/patchcore/scoring.py``; ``window_max``'s window defaults to the
    backbone's feature stride); ``category``: the product category, recorded in
    ``model.json`` (default: the name of ``checkpoint_root``); ``normalize_tasks``: fit every task's score
    normaliser on the validation images (needed where tasks or the thumbnail are merged; a one-task 224-pixel
    model keeps the reference's raw scores); ``runner``: where the jobs run (``src/training/runner.py``; None: this
    machine, with ``train``'s ``workers``). ``gpu_ids`` arguments are accepted and ignored (CPU).
    """

    def __init__(self, batch_size=4, tasks=None, detector_class=PatchCoreDetector, config=None, fusion_weights=None,
                 checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=None, pre_ckpt_path=None,
                 seed=0, task_generator=None, task_generator_spec=None, vis_size=1024,
                 device_target="CPU", device_id=0, category=None, image_score="window_max", thumbnail=None,
                 normalize_tasks=True, runner=None):
        if not tasks:
            raise InputError("tasks", "no tasks: build them with a task generator's create_tasks")
        self.tasks = list(tasks)
        self.indexes = indexes if indexes is not None else sorted(
            {index for task in self.tasks for index in task.indexes}, key=lambda i: (i.row, i.col))
        self.image_size = tuple(image_size_of(self.indexes))
        levels = max(len(i.low_resolution_indexes or []) + 1 for i in self.indexes)
        self.fusion_weights = check_fusion_weights(
            fusion_weights, getattr(self.indexes, "ds_factors", None) or (list(range(levels)) if levels > 1 else None))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.detector_class = detector_class
        self.config = hiad_config(config)
        self.thumbnail = thumbnail if isinstance(config, Config) else (config or {}).get("thumbnail")
        self.normalize_tasks = normalize_tasks
        self.checkpoint_root, self.log_root, self.vis_root = checkpoint_root, log_root, vis_root
        self.category = category or os.path.basename(os.path.abspath(checkpoint_root))
        self.pre_ckpt_path, self.seed = pre_ckpt_path, int(seed)
        if any(task.center is not None for task in self.tasks) and task_generator is None:
            task_generator = RetrieveTaskGenerator(len(self.tasks), fusion_weights=self.fusion_weights, seed=self.seed)
        self.task_generator, self.task_generator_spec = task_generator, task_generator_spec
        self.feature_stride = feature_strides(self.config.patch.backbone_name,
                                              self.config.patch.layers_to_extract_from)[0]
        self.image_score = build_image_score(image_score, self.feature_stride)
        self.vis_size = vis_size
        self.device = (device_target, device_id)
        self.runner = runner
        # networks built once per process: the memory probe, a local runner's in-process jobs and the thresholds
        self._extractors = getattr(runner, "extractors", {})

    @classmethod
    def from_model_plan(cls, config, model_plan, checkpoint_root, pre_ckpt_path=None, seed=0, device=("CPU", 0),
                        category=None, runner=None):
        """The trainer of a ``ModelPlan`` (``src/training/model_plan.py``) made from ``config`` (a ``Config``):
        logs in ``checkpoint_root/logs``; ``runner``: where its jobs run (default: this machine)."""
        return cls(batch_size=config.data.batch_size, tasks=model_plan.tasks, config=config,
                   thumbnail=model_plan.thumbnail, fusion_weights=model_plan.fusion_weights,
                   checkpoint_root=checkpoint_root, log_root=os.path.join(checkpoint_root, "logs"), vis_root=None,
                   indexes=model_plan.plan, pre_ckpt_path=pre_ckpt_path, seed=seed,
                   task_generator=model_plan.task_generator, task_generator_spec=model_plan.task_generator_spec,
                   image_score=model_plan.image_score,
                   device_target=device[0], device_id=device[1], category=category,
                   normalize_tasks=model_plan.tiled, runner=runner)

    # ------------------------------------------------------------------------------------------- training

    def train(self, train_samples, workers=None, val_config=None, gpu_ids=None, val_samples=None):
        """Train every task's bank (and the thumbnail's); resumes an interrupted run. Returns a summary.

        ``workers``: how many local workers (None: as many as fit in memory); only without a runner of its own.
        ``val_config``: HiAD's validation settings (synthetic defects on training images); ``val_samples``: real
        labelled validation images (Samples, normal or defective, with or without masks), used next to them."""
        started = time.perf_counter()
        samples = list(train_samples)
        if not samples:
            raise InputError("train_samples", "no training samples")
        val_config = check_val_config(val_config)
        labelled = [LabelledItem(sample) for sample in val_samples or []]
        thumbnail = check_thumbnail(self.thumbnail, val_config is not None or bool(labelled))
        if self.runner is not None and workers is not None:
            raise InputError("workers", "set on the runner given to the trainer, not here")
        runner = self.runner or LocalRunner(workers, self._extractors)
        for sample in samples + [item.sample for item in labelled]:  # every image read once now: a bad one
            check_image_size(sample.load_image(), self.image_size)            # fails before anything is written
        self.view = samples[0].view or Resize(self.image_size)
        validation = validation_set(samples, val_config, self.seed, len(self.indexes))
        train_positions = validation.train_indices if validation else list(range(len(samples)))
        items = (validation.items if validation else []) + labelled
        in_bank = any(item.bank_source is not None for item in items)
        jobs = plan_jobs(self.tasks, self.indexes, len(samples), train_positions,
                         items if self.normalize_tasks else [], thumbnail, self.config.patch.to_dict(),
                         self.fusion_weights, self.task_generator, say)

        self._set_device()
        meta = self._model_meta(thumbnail, samples, items, val_config, in_bank)
        grids = {name: job_grid(job) for name, job in jobs.items()}
        runtime = probe_runtime(jobs, grids, meta, self.image_size, self.batch_size, self.pre_ckpt_path,
                                self._extractors)
        identities = [sample_identity(sample) for sample in samples]   # each image read and hashed once
        fingerprints = job_fingerprints(jobs, identities, items, meta)
        # banks are built beside their final place (spilled features too): one filesystem, a rename to land
        run = TrainingRun(jobs, samples, items, grids, fingerprints, self.checkpoint_root, self.log_root,
                          self.seed, self.pre_ckpt_path, meta, self.detector_class, self.device,
                          [identity["sha256"] for identity in identities])

        os.makedirs(self.log_root, exist_ok=True)
        with file_logging(logger, os.path.join(self.log_root, "train.log")):
            say("Start training, devices: %s%s", self.device[0],
                "" if gpu_ids is None else f" (gpu_ids {gpu_ids} ignored)")
            prepare_model_folder(self.checkpoint_root, jobs)
            tasks_path = os.path.join(self.checkpoint_root, TASKS_FILE)
            save_tasks(tasks_path, self.tasks, self.indexes)
            say("Tasks config is saved as: %s", tasks_path)
            for task in self.tasks:
                say(str(task))
            done = complete_jobs(self.checkpoint_root, fingerprints, self.detector_class,
                                 lambda text: say(text, level=logging.WARNING))
            todo = {name: job for name, job in jobs.items() if name not in done}
            if done:
                say("Resuming: %d of %d banks are complete and verified, kept: %s", len(done), len(jobs),
                    ", ".join(done))
            estimates = {name: job_estimate(job, grids[name], self.batch_size, self.image_size)
                         for name, job in todo.items()}
            report_memory(estimates, runtime, say)
            say("The training progress can be monitored in: %s.", self.log_root)
            needs = {name: JobNeeds(job_cost(job), runtime + estimates[name]["total"]) for name, job in todo.items()}
            stats, peaks = self._run(run, needs, runner)
            meta["jobs"] = {name: {"fingerprint": fingerprints[name], **bank_digest(self.checkpoint_root, name),
                                   **stats.get(name, {"resumed": True})} for name in jobs}
            meta["tasks_sha256"] = sha256_of(tasks_path)
            if items:
                thresholds, meta["score_normalizer"], meta["validation"]["metrics"] = \
                    self._thresholds(run, val_config, meta)
                meta["thresholds"] = thresholds.to_dict()
            else:
                meta["thresholds"] = meta["score_normalizer"] = None
            meta["memory"] = report_peak(estimates, runtime, peaks, say)
            remove_stale_jobs(self.checkpoint_root, jobs)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.checkpoint_root, MODEL_FILE), meta)
            say("Model saved in %s (%.1f s)", self.checkpoint_root, meta["seconds"])
            return meta

    def _set_device(self):
        import mindspore as ms
        set_device(*self.device)
        ms.set_seed(self.seed)

    def _model_meta(self, thumbnail, samples, items, val_config, in_bank):
        import faiss
        import mindspore as ms
        return {
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "category": self.category,
            "view": self.view.to_dict(), "image_size": list(self.image_size), "seed": self.seed,
            "pretrained": self.pre_ckpt_path is not None,
            "backbone_checkpoint_sha256": sha256_of(self.pre_ckpt_path) if self.pre_ckpt_path else None,
            # where predict.py finds the weights (checked against the sha256; --pre_ckpt_path overrides it)
            "backbone_checkpoint": os.path.abspath(self.pre_ckpt_path) if self.pre_ckpt_path else None,
            "data": {"mean": list(self.config.data.mean), "std": list(self.config.data.std)},
            "batch_size": self.batch_size, "fusion_weights": self.fusion_weights,
            "image_score": self.image_score.to_dict(),
            "inference": {"gaussian_sigma": float(self.config.postprocess["gaussian_sigma"]),
                          "thumbnail_size": None if thumbnail is None else thumbnail["thumbnail_size"],
                          "thumbnail_merge": None if thumbnail is None else thumbnail["merge"]},
            "task_generator": self.task_generator_spec,
            "config": self.config.to_dict(),
            "train_samples": [s.image_path or s.name for s in samples],
            "validation": None if not items else {
                "val_sample_ratio": None if val_config is None else val_config.get("val_sample_ratio", 0.2),
                "max_patch_number": None if val_config is None else val_config.get("max_patch_number"),
                # False: the validation images also trained the banks; they were scored without their own entries
                "held_out": not in_bank,
                "items": [item.describe() for item in items]},
            "versions": {"python": platform.python_version(), "mindspore": ms.__version__,
                         "faiss": faiss.__version__, "numpy": np.__version__},
        }

    def _run(self, run, needs, runner):
        """Train the jobs of ``needs`` on ``runner``, writing each bank as it arrives. ({name: stats}, [peak RSS])."""
        stats, errors = {}, []

        def report(kind, name, payload):
            if kind == "done":
                payload.write(self.checkpoint_root)
                stats[name] = payload.stats
                say("%s done: bank %d of %d patches in %.1f s", name, payload.stats["bank_size"],
                    payload.stats["num_patches"], payload.stats["seconds"])
            else:
                errors.append((kind, payload))

        peaks = runner.run(run, needs, report, say)
        if errors:
            kind, message = errors[0]
            raise InputError(message) if kind == "error" else RuntimeError(message)
        return stats, peaks

    def _thresholds(self, run, val_config, meta):
        """Thresholds, score normaliser and validation metrics (``src/training/thresholds.py``); records each
        validation image's raw score in ``meta`` (the threshold can be re-chosen from model.json)."""
        detectors = {name: self.detector_class.load(os.path.join(self.checkpoint_root, name)) for name in run.jobs}
        # the stored raw grids serve unless the jobs scored no validation or the policy needs the features
        stored = None if not self.normalize_tasks or self.image_score.needs_weights else \
            stored_grids(run, detectors, self.indexes, self.checkpoint_root)
        featurizers = {} if stored is not None else make_featurizers(detectors, meta, self.pre_ckpt_path,
                                                                      self._extractors)
        model = Model(meta, self.tasks, self.indexes, detectors, featurizers, self.task_generator)
        results = validation_results(model, run.validation, stored, self.batch_size)
        thresholds, normalizer, metrics, scores = model_thresholds(results, run.validation, self.config.threshold,
                                                                   val_config, say)
        for record, score in zip(meta["validation"]["items"], scores):
            record["score"] = float(score)
        return thresholds, normalizer, metrics

    # ------------------------------------------------------------------------------------------ inference

    @classmethod
    def from_checkpoint(cls, checkpoint_root, pre_ckpt_path=None, log_root="logs", vis_root="vis",
                        task_generator=None, vis_size=1024):
        """A trainer for a model trained earlier (``tasks.json`` + ``model.json``), ready for ``inference``."""
        meta = Model.read_meta(checkpoint_root)
        tasks, indexes = load_tasks(os.path.join(checkpoint_root, TASKS_FILE))
        config = meta["config"]
        thumbnail = config["hr"]["thumbnail"] if "hr" in config else None
        return cls(meta["batch_size"], tasks, config=Config.from_dict(config, "model.json"), thumbnail=thumbnail,
                   fusion_weights=meta["fusion_weights"], checkpoint_root=checkpoint_root, log_root=log_root,
                   vis_root=vis_root, indexes=indexes, pre_ckpt_path=pre_ckpt_path, seed=meta["seed"],
                   task_generator=task_generator, task_generator_spec=meta["task_generator"],
                   image_score=meta["image_score"],
                   vis_size=vis_size)

    def load_model(self):
        return Model.load(self.checkpoint_root, self.pre_ckpt_path, self.task_generator, self._extractors)

    def inference(self, test_samples, evaluators=None, return_results_only=False, gpu_ids=None, clsname="unknown",
                  names=None):
        """Score ``test_samples`` with the trained model (see ``src.evaluation.evaluate.run_inference``)."""
        self._set_device()
        model = self.load_model()
        log_root = None if return_results_only else self.log_root
        if log_root:
            os.makedirs(log_root, exist_ok=True)
        return run_inference(model, test_samples, evaluators, return_results_only, clsname, names, log_root,
                             self.vis_root, self.vis_size, logger)


