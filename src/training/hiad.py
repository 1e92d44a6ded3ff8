"""HiAD's trainer interface (``hiad.trainer.HRTrainer``) over ``Trainer``: HiAD's arguments and config sections are
converted here, and only here, into a ``Config`` and a ``ModelPlan``.

    trainer = HRTrainer(batch_size=4, tasks=tasks, config={"patch": {...}, "thumbnail": {...}},
                        checkpoint_root="saved_models", log_root="logs", vis_root="vis")
    trainer.train(train_samples, val_config={"anomaly_syn_fn": ["RandomBox"], "val_sample_ratio": 0.2})
    trainer.inference(test_samples, evaluators=[...])            # table printed, results + pictures saved
    scores, maps = trainer.inference(test_samples, return_results_only=True)
"""
import os

from src.config.hr import ThumbnailSettings, ValidationSettings
from src.config.loader import hiad_config
from src.config.schema import Config
from src.evaluation.evaluate import run_inference
from src.inference.model import TASKS_FILE, Model
from src.patchcore.detector import PatchCoreDetector
from src.tiling.plan import check_fusion_weights
from src.tiling.tasks import RetrieveTaskGenerator, load_tasks
from src.training.model_plan import ModelPlan
from src.training.runner import LocalRunner
from src.training.trainer import Trainer, logger
from src.utils.device import set_device
from src.utils.errors import InputError


class HRTrainer:
    """HiAD's arguments: ``tasks`` from a task generator; ``config``: a ``Config``, or HiAD-style sections (``patch``,
    ``data``, ``postprocess``, ``thumbnail``, ``image_score``) over configs/patchcore.yaml (image score: window_max
    unless given); ``fusion_weights``: one per resolution of the tasks' tiles; ``detector_class``: the bank type."""

    def __init__(self, batch_size=4, tasks=None, detector_class=PatchCoreDetector, config=None, fusion_weights=None,
                 checkpoint_root="saved_models", log_root="logs", vis_root="vis"):
        if not tasks:
            raise InputError("tasks", "no tasks: build them with a task generator's create_tasks")
        self.tasks, self.detector_class = list(tasks), detector_class
        self.indexes = sorted({index for task in self.tasks for index in task.indexes}, key=lambda i: (i.row, i.col))
        levels = max(len(i.low_resolution_indexes or []) + 1 for i in self.indexes)
        self.fusion_weights = check_fusion_weights(fusion_weights, list(range(levels)) if levels > 1 else None)
        self.config = hiad_config(config, batch_size)
        self.thumbnail = config.get("thumbnail") if isinstance(config, dict) else None
        self.checkpoint_root, self.log_root, self.vis_root = checkpoint_root, log_root, vis_root
        self.pre_ckpt_path, self.task_generator, self.seed, self.vis_size = None, None, 0, 1024
        self.trainer = None   # the last training's: inference after it shares its networks

    def train(self, train_samples, *, gpu_ids=None, val_config=None, val_samples=None, workers=None, runner=None,
              pre_ckpt_path=None, seed=0, task_generator=None):
        """Train into ``checkpoint_root`` (resuming an interrupted run); returns model.json's contents.
        ``val_config``: HiAD's validation settings (synthetic defects on training images); ``val_samples``: real
        labelled validation images used next to them; ``workers``: local worker processes, or ``runner``: where
        the jobs run; ``pre_ckpt_path``: backbone weights (None: seeded random); ``task_generator``: the Retrieve
        generator that routes tiles (default: one for the tasks). ``gpu_ids`` are ignored (CPU). Arguments after
        the samples are keywords (HiAD's own order differs from this project's earlier one)."""
        if runner is not None and workers is not None:
            raise InputError("workers", "set on the runner given to the trainer, not here")
        if gpu_ids is not None:
            logger.warning("gpu_ids %s ignored: training runs on the CPU", gpu_ids)
        validation = ValidationSettings.from_dict(val_config)
        thumbnail = ThumbnailSettings.from_dict(self.thumbnail, validation is not None or bool(val_samples))
        if task_generator is None and any(task.center is not None for task in self.tasks):
            task_generator = RetrieveTaskGenerator(len(self.tasks), fusion_weights=self.fusion_weights, seed=seed)
        plan = ModelPlan(list(train_samples), self.indexes, self.tasks, task_generator, None, self.config.image_score, True,
                         os.path.basename(os.path.abspath(self.checkpoint_root)), thumbnail, self.fusion_weights,
                         validation, detector_class=self.detector_class)
        self.trainer = Trainer(self.config, plan, self.checkpoint_root, runner or LocalRunner(workers),
                               pre_ckpt_path, seed, log_root=self.log_root)
        self.pre_ckpt_path, self.task_generator, self.seed = pre_ckpt_path, task_generator, seed
        return self.trainer.train(val_samples)

    @classmethod
    def from_checkpoint(cls, checkpoint_root, pre_ckpt_path=None, log_root="logs", vis_root="vis", vis_size=1024):
        """A trainer for a model trained earlier (``tasks.json`` + ``model.json``), ready for ``inference``."""
        meta = Model.read_meta(checkpoint_root)
        tasks, _ = load_tasks(os.path.join(checkpoint_root, TASKS_FILE))
        trainer = cls(meta["batch_size"], tasks, config=Config.from_dict(meta["config"], "model.json"),
                      fusion_weights=meta["fusion_weights"], checkpoint_root=checkpoint_root, log_root=log_root,
                      vis_root=vis_root)
        trainer.pre_ckpt_path, trainer.seed, trainer.vis_size = pre_ckpt_path, meta["seed"], vis_size
        return trainer

    def load_model(self):
        """The trained model, loaded for scoring."""
        if self.trainer is not None:
            return self.trainer.load_model()
        return Model.load(self.checkpoint_root, self.pre_ckpt_path, self.task_generator)

    def inference(self, test_samples, evaluators=None, return_results_only=False, gpu_ids=None, clsname="unknown",
                  names=None):
        """Score ``test_samples`` with the trained model (see ``src.evaluation.evaluate.run_inference``)."""
        set_device("CPU", 0, seed=self.seed)
        model = self.load_model()
        log_root = None if return_results_only else self.log_root
        if log_root:
            os.makedirs(log_root, exist_ok=True)
        return run_inference(model, test_samples, evaluators, return_results_only, clsname, names, log_root,
                             self.vis_root, self.vis_size, logger)
