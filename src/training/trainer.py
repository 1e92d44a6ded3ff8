"""HiAD-style high-resolution trainer: one PatchCore memory bank per task; the facade over the training parts.

    trainer = HRTrainer(batch_size=4, tasks=tasks, detector_class=HRPatchCore, config=config,
                        checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=indexes)
    trainer.train(train_samples, workers=None, val_config=None)
    trainer.inference(test_samples, evaluators=[...])            # table printed, results + pictures saved
    scores, maps = trainer.inference(test_samples, return_results_only=True)

A run, in order: ``planning`` (inputs, validation set, jobs, fingerprints, the runtime's memory), ``manifest``
(the model folder; banks kept on a resume), a runner (``runner``) whose jobs' results are written as they
arrive, ``thresholds``, and last ``model.json``: the model is complete only once it exists. Bad input is found
before anything is written; every bank is staged and fingerprinted, so a rerun keeps the banks that verify.
"""
import logging
import os
import time

from src.backbones.networks import feature_strides
from src.config.loader import hiad_config
from src.config.schema import Config
from src.data.sample import Resize
from src.evaluation.evaluate import run_inference
from src.inference.model import MODEL_FILE, TASKS_FILE, Model, make_featurizers
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.scoring import build_image_score
from src.tiling.plan import check_fusion_weights, plan_image_size
from src.tiling.tasks import RetrieveTaskGenerator, load_tasks
from src.training.manifest import bank_digest, jobs_to_train, model_meta, prepare_model_folder, remove_stale_jobs
from src.training.memory import job_needs, report_peak
from src.training.planning import checked_inputs, plan_jobs, probe_runtime, training_items, training_run
from src.training.runner import LocalRunner, train_jobs
from src.training.thresholds import fit_thresholds, stored_grids
from src.utils.device import set_device
from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.utils.io import sha256_of, write_json
from src.utils.logs import file_logging, say_to

logger = logging.getLogger("patchcore.hr")         # the main log file; console lines are printed (say)


say = say_to(logger)


class HRTrainer:
    """Trains and applies a high-resolution model (module docstring). ``tasks``: from a task generator; ``indexes``:
    the tile plan (default: the tasks' tiles); ``config``: a ``Config``, or HiAD-style sections (``patch``, ``data``,
    ``postprocess``, ``thumbnail``) over configs/patchcore.yaml; ``thumbnail``: the thumbnail branch's settings with a
    ``Config``; ``fusion_weights``: one per ds_factor; ``pre_ckpt_path``: backbone weights (None: seeded random);
    ``task_generator``: the Retrieve generator that routes test tiles (default: RetrieveTaskGenerator);
    ``image_score``: a policy name or {"policy": name, ...} (``src/patchcore/scoring.py``); ``category``: recorded
    in model.json (default: the folder's name); ``normalize_tasks``: fit each task's score normaliser on the
    validation images (a one-task 224-pixel model keeps the reference's raw scores); ``runner``: where the jobs run
    (``src/training/runner.py``; None: this machine, with ``train``'s ``workers``). ``gpu_ids`` are ignored (CPU).
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
        self.image_size = tuple(plan_image_size(self.indexes))
        levels = max(len(i.low_resolution_indexes or []) + 1 for i in self.indexes)
        self.fusion_weights = check_fusion_weights(
            fusion_weights, getattr(self.indexes, "ds_factors", None) or (list(range(levels)) if levels > 1 else None))
        self.batch_size = positive_int(batch_size, "batch_size")
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
                   image_score=model_plan.image_score, device_target=device[0], device_id=device[1],
                   category=category, normalize_tasks=model_plan.tiled, runner=runner)

    # ------------------------------------------------------------------------------------------- training

    def train(self, train_samples, workers=None, val_config=None, gpu_ids=None, val_samples=None):
        """Train every task's bank (and the thumbnail's); resumes an interrupted run. Returns a summary.

        ``workers``: how many local workers (None: as many as fit in memory); only without a runner of its own.
        ``val_config``: HiAD's validation settings (synthetic defects on training images); ``val_samples``: real
        labelled validation images (Samples, normal or defective, with or without masks), used next to them."""
        started = time.perf_counter()
        if self.runner is not None and workers is not None:
            raise InputError("workers", "set on the runner given to the trainer, not here")
        runner = self.runner or LocalRunner(workers, self._extractors)
        samples, val_config, labelled, thumbnail = checked_inputs(train_samples, val_config, val_samples,
                                                                  self.thumbnail, self.image_size)
        self.view = samples[0].view or Resize(self.image_size)
        items, train_positions = training_items(samples, labelled, val_config, self.seed, len(self.indexes))
        jobs = plan_jobs(self.tasks, self.indexes, len(samples), train_positions,
                         items if self.normalize_tasks else [], thumbnail, self.config.patch.to_dict(),
                         self.fusion_weights, self.task_generator, say)
        set_device(*self.device, seed=self.seed)
        meta = model_meta(category=self.category, view=self.view, image_size=self.image_size, seed=self.seed,
                          pre_ckpt_path=self.pre_ckpt_path, config=self.config, batch_size=self.batch_size,
                          fusion_weights=self.fusion_weights, image_score=self.image_score, thumbnail=thumbnail,
                          task_generator_spec=self.task_generator_spec, samples=samples, items=items,
                          val_config=val_config, in_bank=any(item.bank_source is not None for item in items))
        run = training_run(jobs, samples, items, meta, self.checkpoint_root, self.log_root, self.seed,
                           self.pre_ckpt_path, self.detector_class, self.device)
        runtime = probe_runtime(jobs, run.grids, meta, self.image_size, self.batch_size, self.pre_ckpt_path,
                                self._extractors)
        os.makedirs(self.log_root, exist_ok=True)
        with file_logging(logger, os.path.join(self.log_root, "train.log")):
            say("Start training, devices: %s%s", self.device[0],
                "" if gpu_ids is None else f" (gpu_ids {gpu_ids} ignored)")
            tasks_path = prepare_model_folder(self.checkpoint_root, jobs, self.tasks, self.indexes, say)
            todo = jobs_to_train(self.checkpoint_root, jobs, run.fingerprints, self.detector_class, say)
            estimates, needs = job_needs(todo, run.grids, self.batch_size, self.image_size, runtime, say)
            say("The training progress can be monitored in: %s.", self.log_root)
            stats, peaks = train_jobs(runner, run, needs, self.checkpoint_root, say)
            meta["jobs"] = {name: {"fingerprint": run.fingerprints[name], **bank_digest(self.checkpoint_root, name),
                                   **stats.get(name, {"resumed": True})} for name in jobs}
            meta["tasks_sha256"] = sha256_of(tasks_path)
            meta["thresholds"] = meta["score_normalizer"] = None
            if items:
                self._thresholds(run, val_config, meta)
            meta["memory"] = report_peak(estimates, runtime, peaks, say)
            remove_stale_jobs(self.checkpoint_root, jobs)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.checkpoint_root, MODEL_FILE), meta)
            say("Model saved in %s (%.1f s)", self.checkpoint_root, meta["seconds"])
            return meta

    def _thresholds(self, run, val_config, meta):
        """Thresholds, score normaliser and validation metrics (``src/training/thresholds.py``), from the raw grids
        the jobs stored unless they scored no validation or the policy needs the features."""
        detectors = {name: self.detector_class.load(os.path.join(self.checkpoint_root, name)) for name in run.jobs}
        stored = None if not self.normalize_tasks or self.image_score.needs_weights else \
            stored_grids(run, detectors, self.indexes, self.checkpoint_root)
        model = Model(meta, self.tasks, self.indexes, detectors, {} if stored is not None else
                      make_featurizers(detectors, meta, self.pre_ckpt_path, self._extractors), self.task_generator)
        fit_thresholds(model, run.validation, stored, self.batch_size, self.config.threshold, val_config,
                              meta, say)

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
                   image_score=meta["image_score"], vis_size=vis_size)

    def load_model(self):
        return Model.load(self.checkpoint_root, self.pre_ckpt_path, self.task_generator, self._extractors)

    def inference(self, test_samples, evaluators=None, return_results_only=False, gpu_ids=None, clsname="unknown",
                  names=None):
        """Score ``test_samples`` with the trained model (see ``src.evaluation.evaluate.run_inference``)."""
        set_device(*self.device, seed=self.seed)
        model = self.load_model()
        log_root = None if return_results_only else self.log_root
        if log_root:
            os.makedirs(log_root, exist_ok=True)
        return run_inference(model, test_samples, evaluators, return_results_only, clsname, names, log_root,
                             self.vis_root, self.vis_size, logger)


