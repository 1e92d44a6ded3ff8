"""The trainer: a config and the model plan it makes of a category's images in, a model folder out.

    trainer = Trainer(config, model_plan, "output/leather", runner=build_runner("local"))   # src/training/backends.py
    meta = trainer.train(val_samples=None)          # model.json's contents

A run, in order: ``planning`` (inputs, validation set, jobs, fingerprints, the runtime's memory), ``manifest``
(the model folder; banks kept on a resume), a runner (``runner``) whose jobs' results are written as they
arrive, ``thresholds``, and last ``model.json``: the model is complete only once it exists. Bad input is found
before anything is written; every bank is staged and fingerprinted, so a rerun keeps the banks that verify.
HiAD's interface (``HRTrainer``: tasks, HiAD-style config sections, ``inference``) is ``src/training/hiad.py``.
"""
import logging
import os
import time

from src.backbones.networks import feature_strides
from src.inference.model import MODEL_FILE, Model, make_featurizers
from src.inference.versions import has_versions
from src.patchcore.scoring import build_image_score
from src.training.jobs import TrainingRun, sample_identity
from src.training.manifest import bank_digest, jobs_to_train, model_meta, prepare_model_folder, remove_stale_jobs
from src.training.memory import job_needs, report_peak
from src.training.planning import checked_inputs, job_fingerprints, job_grid, plan_jobs, probe_runtime, training_items
from src.training.runner import LocalRunner, train_jobs
from src.training.thresholds import fit_thresholds, stored_grids
from src.utils.device import set_device
from src.utils.errors import InputError
from src.utils.io import sha256_of, write_json
from src.utils.logs import file_logging, say_to

logger = logging.getLogger("patchcore.hr")         # the main log file; console lines are printed (say)


say = say_to(logger)


class Trainer:
    """Trains the model ``model_plan`` (``src/training/model_plan.py``) describes with ``config`` (a ``Config``)
    into ``model_dir``. ``runner``: where the jobs run (``src/training/runner.py``; None: this machine, with the
    plan's workers); ``pre_ckpt_path``: backbone weights (None: seeded random); ``device``: (target, id);
    ``log_root``: where train.log and the jobs' logs go (default ``model_dir/logs``)."""

    def __init__(self, config, model_plan, model_dir, runner=None, pre_ckpt_path=None, seed=0, device=("CPU", 0),
                 log_root=None):
        self.config, self.plan, self.model_dir = config, model_plan, model_dir
        self.runner = runner if runner is not None else LocalRunner(model_plan.workers)
        self.pre_ckpt_path, self.seed, self.device = pre_ckpt_path, int(seed), tuple(device)
        self.log_root = log_root or os.path.join(model_dir, "logs")
        stride = feature_strides(config.patch.backbone_name, config.patch.layers_to_extract_from)[0]
        self.image_score = build_image_score(model_plan.image_score, stride)
        # networks built once per process: the memory probe, a local runner's in-process jobs and the thresholds
        self._extractors = getattr(self.runner, "extractors", {})

    def train(self, val_samples=None):
        """Train every task's bank (and the thumbnail's); resumes an interrupted run. ``val_samples``: real labelled
        validation images (Samples, normal or defective, with or without masks), used next to the synthetic ones
        of the plan's ``val_config``. Returns model.json's contents."""
        started = time.perf_counter()
        if has_versions(self.model_dir):
            raise InputError(self.model_dir, "holds versions taught since training (teach.py): train into another "
                                             "folder, or move this one away to start over")
        plan, batch_size = self.plan, self.config.data.batch_size
        samples, labelled = checked_inputs(plan.samples, val_samples, plan.image_size)
        items, train_positions = training_items(samples, labelled, plan.val_config, self.seed, len(plan.plan))
        jobs = plan_jobs(plan, self.config.patch.to_dict(), train_positions, items, say, self.config.data.train_augment)
        set_device(*self.device, seed=self.seed)
        meta = model_meta(self.config, plan, self.image_score, self.seed, self.pre_ckpt_path, items)
        run = self._training_run(jobs, samples, items, meta)
        runtime = probe_runtime(jobs, run.grids, meta, plan.image_size, batch_size, self.pre_ckpt_path,
                                self._extractors)
        os.makedirs(self.log_root, exist_ok=True)
        with file_logging(logger, os.path.join(self.log_root, "train.log")):
            say("Start training, devices: %s", self.device[0])
            tasks_path = prepare_model_folder(self.model_dir, jobs, plan.tasks, plan.plan, say)
            todo = jobs_to_train(self.model_dir, jobs, run.fingerprints, plan.detector_class, say)
            estimates, needs = job_needs(todo, run.grids, batch_size, plan.image_size, runtime, say)
            say("The training progress can be monitored in: %s.", self.log_root)
            stats, peaks = train_jobs(self.runner, run, needs, self.model_dir, say)
            meta["jobs"] = {name: {"fingerprint": run.fingerprints[name], **bank_digest(self.model_dir, name),
                                   **stats.get(name, {"resumed": True})} for name in jobs}
            meta["tasks_sha256"] = sha256_of(tasks_path)
            meta["thresholds"] = meta["score_normalizer"] = None
            if items:
                self._thresholds(run, meta)
            meta["memory"] = report_peak(estimates, runtime, peaks, say)
            remove_stale_jobs(self.model_dir, jobs)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.model_dir, MODEL_FILE), meta)
            say("Model saved in %s (%.1f s)", self.model_dir, meta["seconds"])
            return meta

    def _training_run(self, jobs, samples, items, meta):
        """The ``TrainingRun`` of ``jobs``, with their feature grids and fingerprints (each image read and hashed
        once); banks are built beside their final place (spilled features too): one filesystem, a rename to land."""
        identities = [sample_identity(sample) for sample in samples]
        return TrainingRun(jobs, samples, items, {name: job_grid(job) for name, job in jobs.items()},
                           job_fingerprints(jobs, identities, items, meta), self.model_dir, self.log_root, self.seed,
                           self.pre_ckpt_path, meta, self.plan.detector_class, self.device,
                           [identity["sha256"] for identity in identities])

    def _thresholds(self, run, meta):
        """Thresholds, score normaliser and validation metrics (``src/training/thresholds.py``), from the raw grids
        the jobs stored unless they scored no validation or the policy needs the features."""
        plan = self.plan
        detectors = {name: plan.detector_class.load(os.path.join(self.model_dir, name)) for name in run.jobs}
        stored = None if not plan.tiled or self.image_score.needs_weights else \
            stored_grids(run.jobs, run.validation, detectors, plan.plan,
                         {name: os.path.join(self.model_dir, name) for name in run.jobs})
        model = Model(meta, plan.tasks, plan.plan, detectors, {} if stored is not None else
                      make_featurizers(detectors, meta, self.pre_ckpt_path, self._extractors), plan.task_generator)
        fit_thresholds(model, run.validation, stored, self.config.data.batch_size, self.config.decision,
                       plan.val_config, meta, say)

    def load_model(self):
        """The trained model, loaded for scoring (sharing this trainer's networks)."""
        return Model.load(self.model_dir, self.pre_ckpt_path, self.plan.task_generator, self._extractors)
