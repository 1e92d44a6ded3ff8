"""HiAD-style high-resolution trainer: one PatchCore memory bank per task, trained in worker processes.

    trainer = HRTrainer(batch_size=4, tasks=tasks, detector_class=HRPatchCore, config=config,
                        checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=indexes)
    trainer.train(train_samples, workers=None, val_config=None)
    trainer.inference(test_samples, evaluators=[...])            # table printed, results + pictures saved
    scores, maps = trainer.inference(test_samples, return_results_only=True)

Training writes, under ``checkpoint_root``: ``tasks.json`` (tile plan and tasks), one folder per task
(``task_<k>/faiss.index`` + ``bank.json``, and ``validation.npz`` with the task's raw validation scores),
``thumbnail/`` for the thumbnail branch, and last ``model.json``: the model is complete only once that
file exists. Logs go to ``log_root``: ``train.log`` (main) and ``<task>.log`` per task.

Jobs (the tasks, plus the thumbnail branch) are spread over worker processes by estimated cost, the
number of pixels the network sees: largest first, each to the least-loaded worker. ``workers=None`` takes
as many as fit in the available memory (at most one per core and one per job). A job reads its images
itself, one at a time, and streams their features into its bank (``src/patchcore/detector.py``), so a worker's
memory is the runtime plus one job's projected features, coreset working memory and one batch; that
estimate is printed before training, the measured peak RSS after.

Resume: every task folder is written through a staging folder and appears only when complete. Its
``bank.json`` records a fingerprint of everything the bank depends on (config, seed, backbone weights,
training images' contents, tiles, validation split) and the sha256 of the index and validation scores. A
rerun after a crash keeps every task whose bank verifies with the same fingerprint and trains the rest;
training is deterministic, so the result equals an uninterrupted run.

Bad input (an unreadable image, an image of the wrong size, inconsistent settings) is found before
anything is written.
"""
import contextlib
import json
import logging
import os
import platform
import shutil
import time

import numpy as np
import psutil

from src.backbones.networks import feature_grid, feature_strides
from src.config.hr import check_thumbnail, check_val_config, thumbnail_patch_config
from src.config.loader import load_config
from src.config.schema import Config
from src.data.sample import Resize
from src.evaluation.evaluate import evaluate_maps, run_inference
from src.evaluation.metrics import decision_metrics
from src.inference.model import (MODEL_FILE, MODEL_FORMAT, MODEL_VERSION, TASKS_FILE, THUMBNAIL, Model,
                                 check_image_size, make_featurizer, make_featurizers)
from src.patchcore.aggregation import to_patch_rows
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.memory_bank import INDEX_FILE, METADATA_FILE
from src.patchcore.normalization import ScoreNormalizer, choose_thresholds
from src.patchcore.sampling import build_sampler
from src.patchcore.scoring import build_image_score
from src.tiling.plan import MultiResolutionHRImageSpliter, WholeImage, check_fusion_weights
from src.tiling.tasks import RetrieveTaskGenerator, assign_tiles, load_tasks, save_tasks
from src.training.jobs import (FINGERPRINT_VERSION, VALIDATION_FILE, Job, TrainingRun, is_complete, peak_rss,
                               sample_identity, sha256_json, synthesizer_config)
from src.training.memory import job_cost, job_estimate, report_memory, report_peak
from src.training.runner import make_runner, schedule
from src.training.validation import LabelledItem, build_validation_set
from src.utils.device import set_device
from src.utils.errors import InputError
from src.utils.io import sha256_of, write_json
from src.utils.logs import file_logging

logger = logging.getLogger("patchcore.hr")         # the main log file; console lines are printed (say)
# Fewer validation images than this make a threshold a guess: training says so.
MIN_VALIDATION_NORMAL, MIN_VALIDATION_ANOMALOUS = 10, 10


def _rate(hits, total):
    """'0.80 (8/10, 95% interval 0.49-0.94)': a rate with its Wilson interval, since validation sets are small."""
    if not total:
        return "n/a"
    from scipy.stats import binomtest
    interval = binomtest(int(hits), int(total)).proportion_ci(method="wilson")
    return f"{hits / total:.2f} ({hits}/{total}, 95% interval {interval.low:.2f}-{interval.high:.2f})"


def validation_batches(items, batch_size):
    """Yield ([items], excluded bank source or None): items in the bank one at a time (each without its own
    entries), the others ``batch_size`` at a time."""
    batch = []
    for item in items:
        if item.bank_source is not None:
            yield [item], item.bank_source
        else:
            batch.append(item)
            if len(batch) == batch_size:
                yield batch, None
                batch = []
    if batch:
        yield batch, None


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
    model keeps the reference's raw scores). ``gpu_ids`` arguments are accepted and ignored (CPU).
    """

    def __init__(self, batch_size=4, tasks=None, detector_class=PatchCoreDetector, config=None, fusion_weights=None,
                 checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=None, pre_ckpt_path=None,
                 seed=0, task_generator=None, task_generator_spec=None, vis_size=1024,
                 device_target="CPU", device_id=0, category=None, image_score="window_max", thumbnail=None,
                 normalize_tasks=True):
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
        self._extractors = {}

    @classmethod
    def from_model_plan(cls, config, model_plan, checkpoint_root, pre_ckpt_path=None, seed=0, device=("CPU", 0),
                        category=None):
        """The trainer of a ``ModelPlan`` (``src/training/model_plan.py``) made from ``config`` (a ``Config``):
        logs in ``checkpoint_root/logs``."""
        return cls(batch_size=config.data.batch_size, tasks=model_plan.tasks, config=config,
                   thumbnail=model_plan.thumbnail, fusion_weights=model_plan.fusion_weights,
                   checkpoint_root=checkpoint_root, log_root=os.path.join(checkpoint_root, "logs"), vis_root=None,
                   indexes=model_plan.plan, pre_ckpt_path=pre_ckpt_path, seed=seed,
                   task_generator=model_plan.task_generator, task_generator_spec=model_plan.task_generator_spec,
                   image_score=model_plan.image_score,
                   device_target=device[0], device_id=device[1], category=category,
                   normalize_tasks=model_plan.tiled)

    # ------------------------------------------------------------------------------------------- training

    def train(self, train_samples, workers=None, val_config=None, gpu_ids=None, val_samples=None):
        """Train every task's bank (and the thumbnail's); resumes an interrupted run. Returns a summary.

        ``val_config``: HiAD's validation settings (synthetic defects on training images); ``val_samples``: real
        labelled validation images (Samples, normal or defective, with or without masks), used next to them."""
        started = time.perf_counter()
        samples = list(train_samples)
        if not samples:
            raise InputError("train_samples", "no training samples")
        val_config = check_val_config(val_config)
        labelled = [LabelledItem(sample) for sample in val_samples or []]
        thumbnail = check_thumbnail(self.thumbnail, val_config is not None or bool(labelled))
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError("workers", f"must be a positive integer, got {workers!r}")
        for sample in samples + [item.sample for item in labelled]:  # every image read once now: a bad one
            check_image_size(sample.load_image(), self.image_size)            # fails before anything is written
        self.view = samples[0].view or Resize(self.image_size)
        validation = self._validation_set(samples, val_config)
        train_positions = validation.train_indices if validation else list(range(len(samples)))
        items = (validation.items if validation else []) + labelled
        in_bank = any(item.bank_source is not None for item in items)
        jobs = self._jobs(samples, train_positions, items if self.normalize_tasks else [], thumbnail)

        self._set_device()
        meta = self._model_meta(thumbnail, samples, items, val_config, in_bank)
        grids = {name: self._grid(job) for name, job in jobs.items()}
        runtime = self._probe(jobs, meta, grids)
        run_identity = {"version": FINGERPRINT_VERSION, "samples": [sample_identity(s) for s in samples],
                        "validation": [item.describe() | {"synthesizer_config": synthesizer_config(item)}
                                       for item in items],
                        **{k: meta[k] for k in ("view", "image_size", "seed", "backbone_checkpoint_sha256", "data",
                                                "batch_size", "fusion_weights")}}
        fingerprints = {name: sha256_json({"run": run_identity, "job": job.describe()}) for name, job in jobs.items()}
        run = TrainingRun(jobs, samples, items, grids, fingerprints, self.checkpoint_root, self.log_root,
                          self.seed, self.pre_ckpt_path, meta, self.detector_class, self.device)

        os.makedirs(self.log_root, exist_ok=True)
        with file_logging(logger, os.path.join(self.log_root, "train.log")):
            say("Start training, devices: %s%s", self.device[0],
                "" if gpu_ids is None else f" (gpu_ids {gpu_ids} ignored)")
            self._prepare_checkpoint_root(jobs)
            tasks_path = os.path.join(self.checkpoint_root, TASKS_FILE)
            save_tasks(tasks_path, self.tasks, self.indexes)
            say("Tasks config is saved as: %s", tasks_path)
            for task in self.tasks:
                say(str(task))
            done = sorted(name for name in jobs if is_complete(os.path.join(self.checkpoint_root, name),
                                                               fingerprints[name], self.detector_class,
                                                               lambda text: say(text, level=logging.WARNING)))
            todo = {name: job for name, job in jobs.items() if name not in done}
            if done:
                say("Resuming: %d of %d banks are complete and verified, kept: %s", len(done), len(jobs),
                    ", ".join(done))
            estimates = {name: job_estimate(job, grids[name], self.batch_size, self.image_size)
                         for name, job in todo.items()}
            workers = report_memory(estimates, runtime, workers, say)
            say("The training progress can be monitored in: %s.", self.log_root)
            stats, peaks = self._run(run, todo, workers)
            meta["jobs"] = {name: {"fingerprint": fingerprints[name], **self._bank_digest(name),
                                   **stats.get(name, {"resumed": True})} for name in jobs}
            meta["tasks_sha256"] = sha256_of(tasks_path)
            if items:
                # score_normalizer: raw scores to [0, 1] with the image threshold at 0.5 (predict.py's image score)
                thresholds, meta["score_normalizer"], meta["validation"]["metrics"] = \
                    self._thresholds(run, val_config, meta)
                meta["thresholds"] = thresholds.to_dict()
            else:
                meta["thresholds"] = meta["score_normalizer"] = None
            meta["memory"] = report_peak(estimates, runtime, peaks, say)
            self._remove_stale_jobs(jobs)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.checkpoint_root, MODEL_FILE), meta)
            say("Model saved in %s (%.1f s)", self.checkpoint_root, meta["seconds"])
            return meta

    def _set_device(self):
        import mindspore as ms
        set_device(*self.device)
        ms.set_seed(self.seed)

    def _validation_set(self, samples, val_config):
        if val_config is None:
            return None
        synthesizers = val_config.get("anomaly_syn_fn") or []
        if not isinstance(synthesizers, (list, tuple)):
            synthesizers = [synthesizers]
        max_patches = val_config.get("max_patch_number")
        return build_validation_set(samples, synthesizers, float(val_config.get("val_sample_ratio", 0.2)), self.seed,
                                    float(val_config.get("anomaly_ratio", 0.5) if synthesizers else 0.0),
                                    None if max_patches is None else max(1, max_patches // len(self.indexes)),
                                    val_config.get("val_images", 10))

    def _jobs(self, samples, train_positions, items, thumbnail):
        """{name: Job} for the tasks (and the thumbnail branch); Retrieve routes validation tiles here."""
        keep = set(train_positions)
        routed = {}
        if any(task.center is not None for task in self.tasks):
            for position, item in enumerate(items):
                for task, indexes in assign_tiles(item.load()[0], self.tasks, self.indexes, self.task_generator):
                    routed.setdefault(task.name, []).extend((position, index) for index in indexes)
        jobs = {}
        for task in self.tasks:
            train = tuple((s, index) for s, index in task.training_tiles(len(samples)) if s in keep)
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
            jobs[task.name] = Job(task.name, self.config.patch.to_dict(), train, val, self.fusion_weights)
        if thumbnail is not None:
            whole = WholeImage(tuple(thumbnail["thumbnail_size"]))
            jobs[THUMBNAIL] = Job(THUMBNAIL, thumbnail_patch_config(self.config.patch.to_dict(), thumbnail),
                                  tuple((s, whole) for s in train_positions),
                                  tuple((position, whole) for position in range(len(items))))
        return jobs

    @staticmethod
    def _grid(job):
        """The job's feature grid (h, w), from its input size and the backbone's stride."""
        patch = job.patch_config
        return feature_grid(patch["backbone_name"], patch["layers_to_extract_from"], job.input_size)

    def _probe(self, jobs, meta, grids):
        """The runtime's resident memory (MindSpore, model, library buffers), measured after running one batch
        of blank tiles (and a blank thumbnail) through each network."""
        blank = np.zeros((self.image_size[1], self.image_size[0], 3), np.uint8)
        measured = set()
        for name, job in jobs.items():
            key = (json.dumps(job.patch_config, sort_keys=True), job.input_size)
            if key not in measured:
                measured.add(key)
                featurizer = make_featurizer(job.patch_config, meta, self.pre_ckpt_path, self._extractors, None)
                features = next(featurizer.view_batches([(blank, job.train_views[0][1])] * self.batch_size))
                if tuple(features.shape[2:]) != grids[name]:
                    raise RuntimeError(f"{name}: the network gives a {features.shape[2:]} feature grid, "
                                       f"not the {grids[name]} its stride predicts")
                # the projection's matrix product makes BLAS allocate its per-thread buffers: count them too
                rows = to_patch_rows(features)[0]
                build_sampler(job.patch_config["sampler"], job.patch_config["percentage"]).projection(
                    rows.shape[1]).project(rows)
        return psutil.Process().memory_info().rss

    def _bank_digest(self, name):
        """The sha256 of a trained job's bank files, for model.json."""
        folder = os.path.join(self.checkpoint_root, name)
        return {"bank_sha256": {file: sha256_of(os.path.join(folder, file)) for file in (INDEX_FILE, METADATA_FILE)}}

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

    def _prepare_checkpoint_root(self, jobs):
        """Mark the model incomplete (no model.json) and drop staging folders left by a killed run."""
        os.makedirs(self.checkpoint_root, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.checkpoint_root, MODEL_FILE))
        for entry in os.listdir(self.checkpoint_root):
            if entry.startswith(".") and ".partial-" in entry and entry[1:].split(".partial-")[0] in jobs:
                shutil.rmtree(os.path.join(self.checkpoint_root, entry), ignore_errors=True)

    def _remove_stale_jobs(self, jobs):
        """Banks of tasks an earlier run had and this one has not (e.g. more tasks before)."""
        for entry in os.listdir(self.checkpoint_root):
            folder = os.path.join(self.checkpoint_root, entry)
            if entry not in jobs and not entry.startswith(".") and os.path.isfile(os.path.join(folder, METADATA_FILE)) \
                    and (entry == THUMBNAIL or entry.startswith("task_")):
                shutil.rmtree(folder)

    def _run(self, run, todo, workers):
        """Train ``todo`` on ``workers`` workers (in this process when one). Returns ({name: stats}, [peak RSS])."""
        stats = {}
        if not todo:
            return stats, [peak_rss()]
        costs = {name: job_cost(job) for name, job in todo.items()}
        plan = schedule(costs, workers)
        for number, names in enumerate(plan):
            say("Worker %d: %s (estimated cost %.3g Mpx)", number, ", ".join(names), sum(costs[n] for n in names) / 1e6)
        errors = []

        def report(kind, name, payload):
            if kind == "done":
                stats[name] = payload
                say("%s done: bank %d of %d patches in %.1f s", name, payload["bank_size"], payload["num_patches"],
                    payload["seconds"])
            else:
                errors.append((kind, payload))

        peaks = make_runner(len(plan), self._extractors).run(run, plan, report)
        if errors:
            kind, message = errors[0]
            raise InputError(message) if kind == "error" else RuntimeError(message)
        return stats, peaks

    def _stored_grids(self, run, detectors):
        """Per validation item, what ``Model.grids`` gives for it (tile grids, thumbnail grid, weights), rebuilt
        from the raw grids each job stored when it fitted its normaliser (``validation.npz``): the images are
        scored once, not twice. None when the jobs scored no validation or the policy needs the features."""
        if not self.normalize_tasks or self.image_score.needs_weights:
            return None
        by_position = {(index.row, index.col): index for index in self.indexes}
        tiles, thumbnails = [[] for _ in run.validation], [None] * len(run.validation)
        for name, job in run.jobs.items():   # the tasks in Model.grids' order, then the thumbnail
            if not job.val_views:
                continue   # a routed task no validation tile went to
            with np.load(os.path.join(self.checkpoint_root, name, VALIDATION_FILE)) as stored:
                grids = detectors[name].normalize(stored["grids"])
                for grid, item, row, col in zip(grids, stored["items"], stored["rows"], stored["cols"]):
                    if row < 0:
                        thumbnails[item] = grid
                    else:
                        tiles[item].append((by_position[(int(row), int(col))], grid))
        return [(tile_grids, thumbnail, [None] * (len(tile_grids) + (thumbnail is not None)))
                for tile_grids, thumbnail in zip(tiles, thumbnails)]

    def _thresholds(self, run, val_config, meta):
        """Image and pixel thresholds (``postprocess.threshold`` policy) from the validation images' maps and
        scores, as the trained model's own inference (``Model.predict_images``) and eval.py compute them;
        validation images that are in the bank are scored without their own entries."""
        detectors = {name: self.detector_class.load(os.path.join(self.checkpoint_root, name)) for name in run.jobs}
        stored = self._stored_grids(run, detectors)
        featurizers = {} if stored is not None else make_featurizers(detectors, meta, self.pre_ckpt_path,
                                                                      self._extractors)
        model = Model(meta, self.tasks, self.indexes, detectors, featurizers, self.task_generator)

        def scored():
            """(score, map, mask) per validation item, in order."""
            if stored is not None:
                for item, grids in zip(run.validation, stored):
                    yield *model.scorer(*grids), item.load()[1]
                return
            for items, exclude in validation_batches(run.validation, self.batch_size):
                loaded = [item.load() for item in items]
                for (score, amap), (_, mask) in zip(model.predict_images([image for image, _ in loaded], exclude),
                                                    loaded):
                    yield score, amap, mask

        scores, maps, masks = (list(column) for column in zip(*scored()))
        labels = np.asarray([item.label for item in run.validation])
        scores = np.asarray(scores)
        policy = self.config.threshold
        thresholds = choose_thresholds(scores[labels == 0], scores[labels == 1], maps, masks, policy=policy)
        decision = decision_metrics(scores, labels, maps, masks, thresholds.to_dict())
        flagged = scores >= thresholds.image
        in_bank = sum(item.bank_source is not None for item in run.validation)
        say("Thresholds (%s) from %d validation images (%d anomalous%s): image %.4g, pixel %.4g; "
            "on them: recall %s, false-alarm rate %s", policy, len(labels), int(labels.sum()),
            "" if not in_bank else f"; {in_bank} also in the bank, scored without their own entries",
            thresholds.image, thresholds.pixel, _rate(int((flagged & (labels == 1)).sum()), int(labels.sum())),
            _rate(int((flagged & (labels == 0)).sum()), int((labels == 0).sum())))
        if (labels == 0).sum() < MIN_VALIDATION_NORMAL or labels.sum() < MIN_VALIDATION_ANOMALOUS:
            say("Warning: %d normal and %d anomalous validation images are too few to set a threshold reliably "
                "(at least %d and %d): raise val_config.val_images or val_sample_ratio, or check the rates on "
                "labelled images with eval.py", int((labels == 0).sum()), int(labels.sum()), MIN_VALIDATION_NORMAL,
                MIN_VALIDATION_ANOMALOUS, level=logging.WARNING)
        normalizer = ScoreNormalizer.at_threshold(scores[labels == 0], thresholds.image).to_dict()
        metrics = None
        if val_config and val_config.get("evaluators"):
            metrics = evaluate_maps(val_config["evaluators"], scores, labels, maps, masks)
            say("Validation metrics: %s", metrics)
        for record, score in zip(meta["validation"]["items"], scores):
            record["score"] = float(score)   # raw image score: the threshold can be re-chosen from model.json
        return thresholds, normalizer, dict(decision, **({} if metrics is None else metrics))

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


