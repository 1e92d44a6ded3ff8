"""HiAD-style high-resolution trainer: one PatchCore memory bank per task, trained in worker processes.

    trainer = HRTrainer(batch_size=4, tasks=tasks, detector_class=HRPatchCore, config=config,
                        checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=indexes)
    trainer.train(train_samples, workers=None, val_config=None)
    trainer.inference(test_samples, evaluators=[...])            # table printed, results + pictures saved
    scores, maps = trainer.inference(test_samples, return_results_only=True)

Training writes, under ``checkpoint_root``: ``tasks.json`` (tile plan and tasks), one folder per task
(``task_<k>/faiss.index`` + ``bank.json``, and ``validation.npz`` with the task's raw validation scores),
``thumbnail/`` for the thumbnail branch, and last ``hr_model.json``: the model is complete only once that
file exists. Logs go to ``log_root``: ``train.log`` (main) and ``<task>.log`` per task.

Jobs (the tasks, plus the thumbnail branch) are spread over worker processes by estimated cost, the
number of pixels the network sees: largest first, each to the least-loaded worker. ``workers=None`` takes
as many as fit in the available memory (at most one per core and one per job). A job reads its images
itself, one at a time, and streams their features into its bank (``src/hr_detector.py``), so a worker's
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
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import queue as queue_module
import resource
import shutil
import time
import traceback
from dataclasses import dataclass

import numpy as np
import psutil

from src.cli import LOG_FORMAT
from src.config import load_config, validate
from src.errors import InputError
from src.features import to_patch_rows
from src.hr_config import check_fusion_weights, check_thumbnail, check_val_config, thumbnail_patch_config
from src.hr_detector import PROJECTION_DIM, HRPatchCore, estimate_fit_bytes
from src.hr_inference import (MODEL_FILE, MODEL_FORMAT, TASKS_FILE, THUMBNAIL, HRModel, assign_tiles, cell_labels,
                              check_image_size, compose_anomaly_map, evaluate_maps, image_score, make_featurizer,
                              run_inference)
from src.io_utils import staged_folder, write_json
from src.memory_bank import METADATA_FILE, sha256_of
from src.normalization import ScoreNormalizer, choose_thresholds
from src.sampling_methods.kcenter_greedy import project_features
from src.synthesis import build_validation_set
from src.tasks import RetrieveTaskGenerator, load_tasks, save_tasks
from src.tiling import MultiResolutionHRImageSpliter

logger = logging.getLogger("patchcore.hr")         # the main log file; console lines are printed (say)
task_logger = logging.getLogger("patchcore.task")  # per-task files only, never the console
VALIDATION_FILE = "validation.npz"
SPILL_FILE = "features.f32"
MIB = 2 ** 20
FINGERPRINT_VERSION = 1


def _sha256_json(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def sample_identity(sample):
    """What a training image's bank contribution depends on: its content and the size it is read at."""
    content = sha256_of(sample.image_path) if sample.image_path else hashlib.sha256(sample.image.tobytes()).hexdigest()
    return {"sha256": content, "image_size": sample.image_size}


def say(message, *args, level=logging.INFO):
    """Print a line and write it to the main log."""
    text = message % args if args else message
    print(text, flush=True)
    logger.log(level, text)


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass(frozen=True)
class Job:
    """One bank to train: a task's, or the thumbnail branch's (named ``thumbnail``).

    ``train_views``/``val_views``: ((position in the training samples / validation items, view), ...) where a
    view is a TileIndex, or None for the whole image (thumbnail).
    """
    name: str
    patch_config: dict
    train_views: tuple
    val_views: tuple

    @property
    def is_thumbnail(self):
        return self.name == THUMBNAIL

    def describe(self):
        def view(entry):
            return [entry[0], None if entry[1] is None else entry[1].to_dict()]
        return {"name": self.name, "patch_config": self.patch_config,
                "train_views": [view(v) for v in self.train_views], "val_views": [view(v) for v in self.val_views]}


@dataclass(frozen=True)
class TrainingRun:
    """Everything a worker needs (sent to spawned processes, so plain data only)."""
    jobs: dict
    samples: list
    validation: list
    grids: dict             # job name -> feature grid (h, w)
    fingerprints: dict      # job name -> fingerprint
    checkpoint_root: str
    log_root: str
    seed: int
    pre_ckpt_path: str
    meta: dict              # data normalisation, batch size, fusion weights, thumbnail size (as in hr_model.json)
    detector_class: type
    device: tuple


def _grouped(views):
    """[(position, [indexes])] in order of first appearance."""
    groups = {}
    for position, index in views:
        groups.setdefault(position, []).append(index)
    return list(groups.items())


def view_features(featurizer, image, indexes, thumbnail_size):
    """Yield [B, D, h, w] features for one image's views (tiles, or [None] for the whole image)."""
    if indexes == [None]:
        yield featurizer.thumbnail(image, thumbnail_size)
        return
    for _, features in featurizer.tile_batches(image, indexes):
        yield features


def _view_mask(mask, index):
    if index is None:
        return mask
    box = index.main_index
    return mask[box.y:box.y + box.height, box.x:box.x + box.width]


def train_job(run, job, featurizer, log):
    """Train one job's bank into ``checkpoint_root/<job>`` (through a staging folder). Returns statistics."""
    started = time.perf_counter()
    thumbnail_size = run.meta["inference"]["thumbnail_size"]
    grid = run.grids[job.name]

    groups = _grouped(job.train_views)

    def stream():
        for done, (position, indexes) in enumerate(groups, start=1):
            yield from view_features(featurizer, run.samples[position].load_image(), indexes, thumbnail_size)
            log.info("features: image %d of %d (%d views)", done, len(groups), len(indexes))

    detector = run.detector_class(job.patch_config, run.seed)
    with staged_folder(os.path.join(run.checkpoint_root, job.name)) as stage:
        spill = os.path.join(stage, SPILL_FILE)
        stats = detector.fit(stream(), len(job.train_views) * grid[0] * grid[1], spill)
        os.remove(spill)
        log.info("bank: %d of %d patches (dimension %d) in %.1f s; process peak RSS so far %.0f MiB",
                 stats["bank_size"], stats["num_patches"], stats["dimension"], time.perf_counter() - started,
                 _peak_rss() / MIB)
        metadata = {"job": job.name, "fingerprint": run.fingerprints[job.name]}
        if job.val_views:
            metadata["validation_sha256"] = score_validation(run, job, detector, featurizer, stage, log)
        detector.save(stage, metadata)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats


def score_validation(run, job, detector, featurizer, stage, log):
    """Raw validation grids -> ``validation.npz``; fit the job's normaliser on them. Returns the file's sha256."""
    grids, items, rows, cols, anomalous = [], [], [], [], []
    thumbnail_size = run.meta["inference"]["thumbnail_size"]
    for position, indexes in _grouped(job.val_views):
        image, mask = run.validation[position].load()
        scored = [grid for features in view_features(featurizer, image, indexes, thumbnail_size)
                  for grid in detector.patch_scores(features)]
        for index, grid in zip(indexes, scored):
            grids.append(grid)
            items.append(position)
            rows.append(-1 if index is None else index.row)
            cols.append(-1 if index is None else index.col)
            anomalous.append(cell_labels(_view_mask(mask, index), grid.shape))
    grids, anomalous = np.stack(grids), np.stack(anomalous)
    detector.normalizer = ScoreNormalizer.fit(grids[~anomalous], anomalous_scores=grids[anomalous])
    log.info("normaliser from %d normal and %d anomalous validation cells: %s", int((~anomalous).sum()),
             int(anomalous.sum()), detector.normalizer.to_dict())
    path = os.path.join(stage, VALIDATION_FILE)
    np.savez(path, grids=grids, items=np.asarray(items), rows=np.asarray(rows), cols=np.asarray(cols))
    return sha256_of(path)


@contextlib.contextmanager
def file_logging(log, path):
    """``log`` (not propagated: console lines come from ``say``) also written to ``path`` during the block."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(LOG_FORMAT)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def run_jobs(run, names, report, extractors=None):
    """Train ``names`` one after the other, stopping at the first failure. ``report(kind, name, payload)``
    receives ("done", name, stats), ("error", name, message) for bad input, ("crash", name, message) else."""
    extractors = {} if extractors is None else extractors
    for name in names:
        job = run.jobs[name]
        with file_logging(task_logger, os.path.join(run.log_root, f"{name}.log")) as log:
            try:
                featurizer = make_featurizer(job.patch_config, run.meta, run.pre_ckpt_path, extractors,
                                             None if job.is_thumbnail else run.meta["fusion_weights"])
                report("done", name, train_job(run, job, featurizer, log))
            except InputError as exc:
                log.error("%s", exc)
                report("error", name, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 -- a worker cannot raise into the main process
                log.error("%s", traceback.format_exc())
                report("crash", name, f"{type(exc).__name__}: {exc} (traceback in "
                                      f"{os.path.join(run.log_root, name + '.log')})")
                return


def worker_main(run, names, messages, threads):
    """Entry point of a spawned worker process."""
    import src  # noqa: F401  (ONEDNN_MAX_CPU_ISA before mindspore loads)
    import mindspore as ms
    from mindspore.device_context.cpu.op_tuning import threads_num
    from threadpoolctl import threadpool_limits
    from src.cli import set_device
    threads_num(threads)           # the workers share the cores: MindSpore, BLAS and faiss's OpenMP alike
    threadpool_limits(threads)
    set_device(*run.device)
    ms.set_seed(run.seed)
    run_jobs(run, names, lambda kind, name, payload: messages.put((kind, name, payload)))
    messages.put(("rss", None, _peak_rss()))


def schedule(costs, workers):
    """Longest job first, each to the least-loaded worker (ties: lowest worker number). [[names] per worker]."""
    loads, plan = [0.0] * workers, [[] for _ in range(workers)]
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        target = loads.index(min(loads))
        plan[target].append(name)
        loads[target] += costs[name]
    return [names for names in plan if names]


def _merge_config(config):
    """HiAD-style ``{"patch": ..., "thumbnail": ...}`` over the defaults of configs/patchcore.yaml, validated
    (HiAD's ``patch_size`` entry is ignored: the tiles come from the plan)."""
    merged = load_config(None)
    config = dict(config or {})
    unknown = set(config) - {"patch", "data", "postprocess", "thumbnail"}
    if unknown:
        raise InputError("config", f"unknown sections {sorted(unknown)}")
    for section in ("patch", "data", "postprocess"):
        given = {k: v for k, v in (config.get(section) or {}).items() if k != "patch_size"}
        if set(given) - set(merged[section]):
            raise InputError("config", f"unknown {section} entries {sorted(set(given) - set(merged[section]))}")
        merged[section].update(given)
    validate(merged, "config")
    merged["thumbnail"] = config.get("thumbnail")
    return merged


def image_size_of(indexes):
    """(w, h) of the plan: its parameter, or the extent of its tiles."""
    if isinstance(indexes, MultiResolutionHRImageSpliter):
        return indexes.image_size
    return (max(i.main_index.x + i.main_index.width for i in indexes),
            max(i.main_index.y + i.main_index.height for i in indexes))


class HRTrainer:
    """Trains and applies a high-resolution model (module docstring).

    ``tasks``: from a task generator; ``indexes``: the tile plan (default: the tasks' tiles);
    ``config``: HiAD-style ``{"patch": {...}, "thumbnail": {"thumbnail_size": ..., ...}}`` plus optional
    ``data``/``postprocess`` sections, defaults from configs/patchcore.yaml; ``fusion_weights``: one per
    ds_factor of a multi-resolution plan; ``pre_ckpt_path``: backbone weights (None: seeded random);
    ``task_generator``: for Retrieve tasks, the generator used (routes test tiles; default: a
    RetrieveTaskGenerator with the default descriptor); ``image_score_window``: moving-average window in
    pixels (default: the backbone's feature stride); ``category``: the product category, recorded in
    ``hr_model.json`` (default: the name of ``checkpoint_root``). ``gpu_ids`` arguments are accepted and
    ignored (CPU).
    """

    def __init__(self, batch_size=4, tasks=None, detector_class=HRPatchCore, config=None, fusion_weights=None,
                 checkpoint_root="saved_models", log_root="logs", vis_root="vis", indexes=None, pre_ckpt_path=None,
                 seed=0, task_generator=None, task_generator_spec=None, image_score_window=None, vis_size=1024,
                 device_target="CPU", device_id=0, full_config=None, category=None):
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
        self.config = _merge_config(config)
        self.full_config = full_config
        self.checkpoint_root, self.log_root, self.vis_root = checkpoint_root, log_root, vis_root
        self.category = category or os.path.basename(os.path.abspath(checkpoint_root))
        self.pre_ckpt_path, self.seed = pre_ckpt_path, int(seed)
        if any(task.center is not None for task in self.tasks) and task_generator is None:
            task_generator = RetrieveTaskGenerator(len(self.tasks), fusion_weights=self.fusion_weights, seed=self.seed)
        self.task_generator, self.task_generator_spec = task_generator, task_generator_spec
        from src.model import feature_strides
        self.feature_stride = feature_strides(self.config["patch"]["backbone_name"],
                                              self.config["patch"]["layers_to_extract_from"])[0]
        self.image_score_window = image_score_window or self.feature_stride
        self.vis_size = vis_size
        self.device = (device_target, device_id)
        self._extractors = {}

    # ------------------------------------------------------------------------------------------- training

    def train(self, train_samples, workers=None, val_config=None, gpu_ids=None):
        """Train every task's bank (and the thumbnail's); resumes an interrupted run. Returns a summary."""
        started = time.perf_counter()
        samples = list(train_samples)
        if not samples:
            raise InputError("train_samples", "no training samples")
        val_config = check_val_config(val_config)
        thumbnail = check_thumbnail(self.config["thumbnail"], val_config is not None)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError("workers", f"must be a positive integer, got {workers!r}")
        for sample in samples:  # every image read once now: a bad one fails before anything is written
            check_image_size(sample.load_image(), self.image_size)
        validation = self._validation_set(samples, val_config)
        train_positions = validation.train_indices if validation else list(range(len(samples)))
        items = validation.items if validation else []
        jobs = self._jobs(samples, train_positions, items, thumbnail)

        self._set_device()
        meta = self._model_meta(thumbnail, samples, items, val_config)
        grids, runtime = self._probe(jobs, meta)
        run_identity = {"version": FINGERPRINT_VERSION, "samples": [sample_identity(s) for s in samples],
                        "validation": [item.describe() | {"synthesizer_config": _synthesizer_config(item)}
                                       for item in items],
                        **{k: meta[k] for k in ("image_size", "seed", "backbone_checkpoint_sha256", "data",
                                                "batch_size", "fusion_weights")}}
        fingerprints = {name: _sha256_json({"run": run_identity, "job": job.describe()}) for name, job in jobs.items()}
        run = TrainingRun(jobs, samples, items, grids, fingerprints, self.checkpoint_root, self.log_root, self.seed,
                          self.pre_ckpt_path, meta, self.detector_class, self.device)

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
            done = sorted(name for name in jobs if self._is_complete(name, fingerprints[name]))
            todo = {name: job for name, job in jobs.items() if name not in done}
            if done:
                say("Resuming: %d of %d banks are complete and verified, kept: %s", len(done), len(jobs),
                    ", ".join(done))
            estimates = {name: self._estimate(job, grids[name], meta["inference"]["thumbnail_size"])
                         for name, job in todo.items()}
            workers = self._report_memory(estimates, runtime, workers)
            say("The training progress can be monitored in: %s.", self.log_root)
            stats, peaks = self._run(run, todo, workers)
            meta["jobs"] = {name: {"fingerprint": fingerprints[name], **stats.get(name, {"resumed": True})}
                            for name in jobs}
            if items:
                thresholds, meta["validation"]["metrics"] = self._thresholds(run, val_config)
                meta["thresholds"] = thresholds.to_dict()
            else:
                meta["thresholds"] = None
            meta["memory"] = self._report_peak(estimates, runtime, peaks)
            self._remove_stale_jobs(jobs)
            meta["seconds"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.checkpoint_root, MODEL_FILE), meta)
            say("Model saved in %s (%.1f s)", self.checkpoint_root, meta["seconds"])
            return meta

    def _set_device(self):
        import mindspore as ms
        from src.cli import set_device
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
                                    None if max_patches is None else max(1, max_patches // len(self.indexes)))

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
            jobs[task.name] = Job(task.name, self.config["patch"], train, val)
        if thumbnail is not None:
            jobs[THUMBNAIL] = Job(THUMBNAIL, thumbnail_patch_config(self.config["patch"], thumbnail),
                                  tuple((s, None) for s in train_positions),
                                  tuple((position, None) for position in range(len(items))))
        return jobs

    def _probe(self, jobs, meta):
        """Feature grid of every job and the runtime's resident memory (MindSpore, model, library buffers),
        measured after running one batch of blank tiles (and a blank thumbnail) through each network."""
        first = self.indexes[0].main_index
        tile = np.zeros((first.height, first.width, 3), np.uint8)
        measured, grids = {}, {}
        for name, job in jobs.items():
            key = (json.dumps(job.patch_config, sort_keys=True), job.is_thumbnail)
            if key not in measured:
                featurizer = make_featurizer(job.patch_config, meta, self.pre_ckpt_path, self._extractors, None)
                features = (featurizer.thumbnail(tile, meta["inference"]["thumbnail_size"]) if job.is_thumbnail
                            else featurizer.network([tile] * self.batch_size))
                measured[key] = tuple(int(v) for v in features.shape[2:])
                # the projection's matrix product makes BLAS allocate its per-thread buffers: count them too
                project_features(to_patch_rows(features)[0], PROJECTION_DIM, np.random.default_rng(0))
            grids[name] = measured[key]
        return grids, psutil.Process().memory_info().rss

    def _model_meta(self, thumbnail, samples, items, val_config):
        import faiss
        import mindspore as ms
        return {
            "format": MODEL_FORMAT, "version": 1, "category": self.category,
            "image_size": list(self.image_size), "seed": self.seed,
            "pretrained": self.pre_ckpt_path is not None,
            "backbone_checkpoint_sha256": sha256_of(self.pre_ckpt_path) if self.pre_ckpt_path else None,
            "data": {"mean": list(self.config["data"]["mean"]), "std": list(self.config["data"]["std"])},
            "batch_size": self.batch_size, "fusion_weights": self.fusion_weights,
            "inference": {"gaussian_sigma": float(self.config["postprocess"]["gaussian_sigma"]),
                          "image_score_window": int(self.image_score_window),
                          "thumbnail_size": None if thumbnail is None else thumbnail["thumbnail_size"],
                          "thumbnail_merge": None if thumbnail is None else thumbnail["merge"]},
            "task_generator": self.task_generator_spec,
            "config": self.full_config or {k: self.config[k] for k in ("patch", "data", "postprocess", "thumbnail")},
            "train_samples": [s.image_path or s.name for s in samples],
            "validation": None if val_config is None else {
                "val_sample_ratio": val_config.get("val_sample_ratio", 0.2),
                "max_patch_number": val_config.get("max_patch_number"),
                "items": [item.describe() for item in items]},
            "versions": {"python": platform.python_version(), "mindspore": ms.__version__,
                         "faiss": faiss.__version__, "numpy": np.__version__},
        }

    def _prepare_checkpoint_root(self, jobs):
        """Mark the model incomplete (no hr_model.json) and drop staging folders left by a killed run."""
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

    def _is_complete(self, name, fingerprint):
        """The job's folder holds a bank that verifies (sha256) and was trained with this exact fingerprint."""
        folder = os.path.join(self.checkpoint_root, name)
        if not os.path.isfile(os.path.join(folder, METADATA_FILE)):
            return False
        try:
            detector = self.detector_class.load(folder)
        except InputError as exc:
            say("%s: retraining (%s)", name, exc, level=logging.WARNING)
            return False
        meta = detector.metadata
        if meta.get("fingerprint") != fingerprint:
            return False
        validation = os.path.join(folder, VALIDATION_FILE)
        expected = meta.get("validation_sha256")
        return expected is None or (os.path.isfile(validation) and sha256_of(validation) == expected)

    def _estimate(self, job, grid, thumbnail_size):
        """Bytes the job adds to the runtime: the fit's peak (``estimate_fit_bytes``) plus what one batch leaves
        resident while features stream in: per input, the features, their patch rows and the framework's copy
        (x levels with fusion), the input and its normalisation temporaries; plus the decoded image."""
        dim = int(job.patch_config["target_embed_dimension"])
        estimate = estimate_fit_bytes(len(job.train_views) * grid[0] * grid[1], dim, job.patch_config)
        width, height = thumbnail_size if job.is_thumbnail else job.train_views[0][1].main_index[2:]
        levels = 1 if job.is_thumbnail or self.fusion_weights is None else 1 + len(self.fusion_weights)
        inputs = 1 if job.is_thumbnail else self.batch_size
        batch = inputs * (3 * levels * dim * grid[0] * grid[1] + 3 * 3 * width * height) * 4 \
            + self.image_size[0] * self.image_size[1] * 3
        return dict(estimate, batch=batch, total=estimate["peak"] + batch)

    def _report_memory(self, estimates, runtime, workers):
        """Print the memory estimate of the largest job to train; choose the worker count. Returns it."""
        if not estimates:
            return 0
        largest = max(estimates, key=lambda n: estimates[n]["total"])
        e = estimates[largest]
        per_worker = runtime + e["total"]
        available = psutil.virtual_memory().available
        chosen = workers or int(min(len(estimates), os.cpu_count() or 1, max(1, available // per_worker)))
        say("Memory estimate for %s, the largest of %d jobs to train: projected features %.0f MiB (%d patches x %d) "
            "+ coreset selection working memory %.0f MiB (then bank %.0f MiB) + one batch %.0f MiB + runtime "
            "(MindSpore and model; measured) %.0f MiB = %.0f MiB per worker; %.0f MiB available -> %d worker(s)%s",
            largest, len(estimates), e["projected_features"] / MIB, e["projected_features"] // (4 * PROJECTION_DIM),
            PROJECTION_DIM, (e["peak"] - e["projected_features"]) / MIB, e["bank"] / MIB, e["batch"] / MIB,
            runtime / MIB, per_worker / MIB, available / MIB, chosen, "" if workers is None else " (as requested)")
        if chosen * per_worker > available:
            say("Warning: %d workers need about %.0f MiB, more than the %.0f MiB available", chosen,
                chosen * per_worker / MIB, available / MIB, level=logging.WARNING)
        return chosen

    def _report_peak(self, estimates, runtime, peaks):
        """Print the measured peak RSS next to the estimate; returns both for hr_model.json."""
        if not estimates:
            return None
        largest = max(estimates, key=lambda n: estimates[n]["total"])
        e = estimates[largest]
        estimate = runtime + e["total"]
        peak = max(peaks)
        data = e["projected_features"] + e["bank"]
        say("Peak RSS %.0f MiB (largest of %d processes) = runtime %.0f MiB (MindSpore, model, one batch; measured "
            "before training) + training %.0f MiB (%.2f x %s's projected features + bank, %.0f MiB); estimate %.0f MiB "
            "(peak/estimate %.2f)", peak / MIB, len(peaks), runtime / MIB, (peak - runtime) / MIB,
            (peak - runtime) / data, largest, data / MIB, estimate / MIB, peak / estimate)
        return {"peak_rss_bytes": peak, "estimate_bytes": estimate, "runtime_bytes": runtime, "largest_job": largest,
                "largest_job_estimate": e, "training_bytes_over_projected_features_and_bank": (peak - runtime) / data}

    def _run(self, run, todo, workers):
        """Train ``todo`` on ``workers`` workers (in this process when one). Returns ({name: stats}, [peak RSS])."""
        stats = {}
        if not todo:
            return stats, [_peak_rss()]
        costs = {name: self._cost(job, run.meta["inference"]["thumbnail_size"]) for name, job in todo.items()}
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

        if len(plan) == 1:
            run_jobs(run, plan[0], report, self._extractors)
            peaks = [_peak_rss()]
        else:
            peaks = self._run_processes(run, plan, report, errors)
        if errors:
            kind, message = errors[0]
            raise InputError(message) if kind == "error" else RuntimeError(message)
        return stats, peaks

    def _run_processes(self, run, plan, report, errors):
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        threads = max(1, (os.cpu_count() or 1) // len(plan))
        processes = [context.Process(target=worker_main, args=(run, names, messages, threads), daemon=True)
                     for names in plan]
        for process in processes:
            process.start()
        peaks = [_peak_rss()]
        finished = 0
        while finished < len(processes):
            try:
                kind, name, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead and not errors:
                    errors.append(("crash", f"a worker process died (exit code {dead[0].exitcode}); see "
                                            f"{self.log_root}"))
                if errors:
                    break
                continue
            if kind == "rss":
                peaks.append(payload)
                finished += 1
            else:
                report(kind, name, payload)
                if errors:
                    break
        for process in processes:
            if errors and process.is_alive():
                process.terminate()   # completed banks stay for a resume
            process.join()
        return peaks

    def _cost(self, job, thumbnail_size):
        """Estimated work: pixels through the network (each fusion level counts)."""
        if job.is_thumbnail:
            levels, pixels = 1, thumbnail_size[0] * thumbnail_size[1]
        else:
            box = job.train_views[0][1].main_index
            levels = 1 if self.fusion_weights is None else sum(w > 0 for w in self.fusion_weights)
            pixels = box.width * box.height
        return float((len(job.train_views) + len(job.val_views)) * levels * pixels)

    def _thresholds(self, run, val_config):
        """Image and pixel thresholds from the validation set's maps, built exactly as at inference."""
        # bank.json alone (normaliser): the indexes are not used here, and were just written or verified on resume.
        detectors = {name: self.detector_class.load(os.path.join(self.checkpoint_root, name), index=False)
                     for name in run.jobs}
        by_position = {(index.row, index.col): index for index in self.indexes}
        per_item = [([], None) for _ in run.validation]
        for name, detector in detectors.items():
            if "validation_sha256" not in detector.metadata:
                continue
            with np.load(os.path.join(self.checkpoint_root, name, VALIDATION_FILE), allow_pickle=False) as data:
                grids = detector.normalize(data["grids"])
                for grid, item, row, col in zip(grids, data["items"], data["rows"], data["cols"]):
                    if name == THUMBNAIL:
                        per_item[item] = (per_item[item][0], grid)
                    else:
                        per_item[item][0].append((by_position[(int(row), int(col))], grid))
        settings = run.meta["inference"]
        scores, maps, masks = [], [], []
        for item, (tiles, thumbnail) in zip(run.validation, per_item):
            amap = compose_anomaly_map(tiles, self.image_size, thumbnail, settings["thumbnail_merge"],
                                       settings["gaussian_sigma"])
            scores.append(image_score(amap, settings["image_score_window"]))
            maps.append(amap)
            masks.append(item.load()[1])
        labels = np.asarray([item.label for item in run.validation])
        scores = np.asarray(scores)
        thresholds = choose_thresholds(scores[labels == 0], scores[labels == 1], maps, masks)
        say("Thresholds from %d validation images (%d with synthetic anomalies): image %.4g, pixel %.4g", len(labels),
            int(labels.sum()), thresholds.image, thresholds.pixel)
        metrics = None
        if val_config.get("evaluators"):
            metrics = evaluate_maps(val_config["evaluators"], scores, labels, maps, masks)
            say("Validation metrics: %s", metrics)
        return thresholds, metrics

    # ------------------------------------------------------------------------------------------ inference

    @classmethod
    def from_checkpoint(cls, checkpoint_root, pre_ckpt_path=None, log_root="logs", vis_root="vis",
                        task_generator=None, vis_size=1024):
        """A trainer for a model trained earlier (``tasks.json`` + ``hr_model.json``), ready for ``inference``."""
        meta = HRModel.read_meta(checkpoint_root)
        tasks, indexes = load_tasks(os.path.join(checkpoint_root, TASKS_FILE))
        config = meta["config"]
        thumbnail = config["hr"]["thumbnail"] if "hr" in config else config.get("thumbnail")
        return cls(meta["batch_size"], tasks, config={**{k: config[k] for k in ("patch", "data", "postprocess")},
                                                     "thumbnail": thumbnail},
                   fusion_weights=meta["fusion_weights"], checkpoint_root=checkpoint_root, log_root=log_root,
                   vis_root=vis_root, indexes=indexes, pre_ckpt_path=pre_ckpt_path, seed=meta["seed"],
                   task_generator=task_generator, task_generator_spec=meta["task_generator"],
                   image_score_window=meta["inference"]["image_score_window"], vis_size=vis_size, full_config=config)

    def load_model(self):
        return HRModel.load(self.checkpoint_root, self.pre_ckpt_path, self.task_generator, self._extractors)

    def inference(self, test_samples, evaluators=None, return_results_only=False, gpu_ids=None, clsname="unknown",
                  names=None):
        """Score ``test_samples`` with the trained model (see ``src/hr_inference.run_inference``)."""
        self._set_device()
        model = self.load_model()
        log_root = None if return_results_only else self.log_root
        if log_root:
            os.makedirs(log_root, exist_ok=True)
        return run_inference(model, test_samples, evaluators, return_results_only, clsname, names, log_root,
                             self.vis_root, self.vis_size, logger)


def _synthesizer_config(item):
    config = getattr(item.synthesizer, "config", None)
    return config() if callable(config) else None
