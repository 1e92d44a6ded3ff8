"""Training jobs: one memory bank each (a task's, or the thumbnail branch's), and how one is trained.

A ``Job`` names its patch config and its views (which tiles of which training images; validation views
likewise); a ``TrainingRun`` is everything a worker needs to train jobs (plain data: it is sent to spawned
processes). ``run_jobs`` trains named jobs one after the other in this process, reporting each result; the
runners (``src/training/runner.py``) decide where that happens. A job returns its bank as a ``JobResult``
(the files' bytes and sha256): the driver verifies and writes it, so a worker needs no access to the
checkpoint folder. A job's folder is written through a staging folder and appears only when complete; its
``bank.json`` records the job's fingerprint (everything the bank depends on), so a rerun keeps the banks that
verify (:func:`is_complete`).
"""
import contextlib
import hashlib
import json
import logging
import os
import resource
import tempfile
import time
import traceback
from dataclasses import dataclass

import numpy as np

from src.data.augment import augmented
from src.inference.model import make_featurizer
from src.patchcore.memory_bank import METADATA_FILE
from src.patchcore.normalization import ScoreNormalizer
from src.patchcore.scoring import cell_labels
from src.tiling.plan import WholeImage
from src.utils.device import faiss_threads, set_device
from src.utils.errors import InputError
from src.utils.io import sha256_of, staged_folder
from src.utils.logs import file_logging

task_logger = logging.getLogger("patchcore.task")  # per-task files only, never the console
VALIDATION_FILE = "validation.npz"
SPILL_FILE = "features.f32"
MIB = 2 ** 20
# Bumped when what a bank holds changes for the same inputs, so a resume retrains banks fitted the old way: 3, the
# normaliser anchored just above the highest unflagged validation score (was midway); 4, its edge rings.
FINGERPRINT_VERSION = 4


def sha256_json(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def sample_identity(sample):
    """What a training image's bank contribution depends on: its content and the size it is read at."""
    content = sha256_of(sample.image_path) if sample.image_path else hashlib.sha256(sample.image.tobytes()).hexdigest()
    return {"sha256": content, "image_size": sample.image_size}


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass(frozen=True)
class Job:
    """One bank to train: a task's, or the thumbnail branch's (named ``thumbnail``).

    ``train_views``/``val_views``: ((position in the training samples / validation items, view), ...) where a
    view is a TileIndex, or a WholeImage (thumbnail); ``fusion_weights``: the levels its views are fused from
    (None: the view alone); ``augment``: the augmented copies of every training image (``data.train_augment``)
    whose views also train the bank.
    """
    name: str
    patch_config: dict
    train_views: tuple
    val_views: tuple
    fusion_weights: list = None
    augment: tuple = ()

    @property
    def train_inputs(self):
        """How many network inputs train the bank: every training view of every copy."""
        return len(self.train_views) * (1 + len(self.augment))

    @property
    def input_size(self):
        """(w, h) of the network inputs (every view of a job has the same)."""
        return self.train_views[0][1].input_size

    def describe(self):
        def view(entry):
            return [entry[0], entry[1].to_dict()]
        # augment only when there is some: a job without copies keeps the fingerprint it had before the option
        return {"name": self.name, "patch_config": self.patch_config, "fusion_weights": self.fusion_weights,
                **({"augment": list(self.augment)} if self.augment else {}),
                "train_views": [view(v) for v in self.train_views], "val_views": [view(v) for v in self.val_views]}


@dataclass(frozen=True)
class TrainingRun:
    """Everything a worker needs (sent to spawned processes, so plain data only)."""
    jobs: dict
    samples: list
    validation: list
    grids: dict             # job name -> feature grid (h, w)
    fingerprints: dict      # job name -> fingerprint
    scratch_root: str       # where a job builds its bank (and spills features); None: the system's temp folder
    log_root: str
    seed: int
    pre_ckpt_path: str
    meta: dict              # data normalisation, batch size, fusion weights, thumbnail size (as in model.json)
    detector_class: type
    device: tuple
    sample_sha256: list     # each training image's sha256 as the driver read it (a remote node checks its own)


@dataclass(frozen=True)
class JobResult:
    """A trained job as its worker hands it over: the bank folder's files, their sha256 and the statistics."""
    name: str
    files: dict             # file name -> bytes
    sha256: dict            # file name -> hex digest, taken where the files were written
    stats: dict

    @classmethod
    def collect(cls, name, folder, stats):
        files = {}
        for file in sorted(os.listdir(folder)):
            with open(os.path.join(folder, file), "rb") as f:
                files[file] = f.read()
        return cls(name, files, {file: hashlib.sha256(data).hexdigest() for file, data in files.items()}, stats)

    def write(self, checkpoint_root):
        """Verify every file against its sha256, then write ``checkpoint_root/<name>`` through a staging folder:
        the folder appears complete or not at all."""
        for file, data in self.files.items():
            if hashlib.sha256(data).hexdigest() != self.sha256.get(file):
                raise RuntimeError(f"{self.name}/{file}: the bytes received differ from those the worker wrote")
        with staged_folder(os.path.join(checkpoint_root, self.name)) as stage:
            for file, data in self.files.items():
                with open(os.path.join(stage, file), "wb") as f:
                    f.write(data)


def grouped_views(views):
    """[(position, [indexes])] in order of first appearance."""
    groups = {}
    for position, index in views:
        groups.setdefault(position, []).append(index)
    return list(groups.items())


def job_views(images, groups, augment=()):
    """(image, view) of every view of ``groups`` ([(position, [views])]), of the image and then of each of its
    ``augment`` copies; ``images(position)`` loads one image when its first view is needed."""
    for position, indexes in groups:
        for image in augmented(images(position), augment):
            for index in indexes:
                yield image, index


def _view_mask(mask, view):
    if isinstance(view, WholeImage):
        return mask
    box = view.main_index
    return mask[box.y:box.y + box.height, box.x:box.x + box.width]


def train_job(run, job, featurizer, log):
    """Train one job's bank in a scratch folder of ``run.scratch_root``. Returns its ``JobResult``."""
    started = time.perf_counter()
    grid = run.grids[job.name]

    groups = grouped_views(job.train_views)
    done = iter(range(1, len(groups) + 1))

    def image(position):
        log.info("features: image %d of %d", next(done), len(groups))
        return run.samples[position].load_image()

    detector = run.detector_class(job.patch_config, run.seed)
    if run.scratch_root:
        os.makedirs(run.scratch_root, exist_ok=True)
    # named like a staging folder, so a killed run's leftovers in the checkpoint folder are recognised
    with tempfile.TemporaryDirectory(prefix=f".{job.name}.partial-", dir=run.scratch_root) as stage:
        spill = os.path.join(stage, SPILL_FILE)
        stats = detector.fit(featurizer.view_batches(job_views(image, groups, job.augment)),
                             job.train_inputs * grid[0] * grid[1], spill)
        with contextlib.suppress(FileNotFoundError):
            os.remove(spill)
        log.info("bank: %d of %d patches (dimension %d) in %.1f s (features %.1f s, %s %.1f s); process peak RSS so "
                 "far %.0f MiB", stats["bank_size"], stats["num_patches"], stats["dimension"],
                 time.perf_counter() - started, stats["feature_seconds"], stats["coreset_method"],
                 stats["coreset_seconds"], peak_rss() / MIB)
        cells = grid[0] * grid[1]
        # which training image each bank entry comes from (its copies' entries too): validation images in the
        # bank are scored without theirs (or without their fold's)
        view_sources = [position for position, indexes in groups for _ in range(1 + len(job.augment))
                        for _ in indexes]
        metadata = {"job": job.name, "fingerprint": run.fingerprints[job.name],
                    "sources": [int(view_sources[row // cells]) for row in detector.selected]}
        detector.bank.metadata = metadata
        if job.val_views:
            metadata["validation_sha256"] = score_validation(run.validation, job, detector, featurizer, stage, log)
        detector.save(stage, metadata)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        return JobResult.collect(job.name, stage, stats)


def score_validation(items, job, detector, featurizer, stage, log, search_threads=1):
    """Raw grids of the job's views of the validation ``items`` -> ``validation.npz`` in ``stage``; fit the job's
    normaliser on them. Returns the file's sha256. ``search_threads``: faiss's threads for the kNN search (None: the
    process's). One in training: the distances' last bits depend on how BLAS splits the work, and a bank must be the
    same whatever the worker count (or a Ray node's CPUs) gave its process."""
    with faiss_threads(search_threads) if search_threads else contextlib.nullcontext():
        grids, positions, rows, cols, anomalous = _validation_grids(items, job, detector, featurizer)
    grids, anomalous = np.stack(grids), np.stack(anomalous)
    detector.normalizer = ScoreNormalizer.fit_grids(grids, anomalous)
    log.info("normaliser from %d normal and %d anomalous validation cells: %s", int((~anomalous).sum()),
             int(anomalous.sum()), detector.normalizer.to_dict())
    path = os.path.join(stage, VALIDATION_FILE)
    np.savez(path, grids=grids, items=np.asarray(positions), rows=np.asarray(rows), cols=np.asarray(cols))
    return sha256_of(path)


def _by_exclusion(groups, items):
    """``groups`` ([(position in ``items``, views)]) reordered so that items excluding the same bank sources (their
    own image, their fold, or none) are consecutive, in order of first appearance: the detector rebuilds its bank
    without a set of sources once (it keeps only the last such bank)."""
    first = {}
    for position, _ in groups:
        first.setdefault(items[position].excluded_sources, len(first))
    return sorted(groups, key=lambda group: first[items[group[0]].excluded_sources])


def _validation_grids(items, job, detector, featurizer):
    """The job's raw score grid of every view of the validation ``items``, with the item's position, the tile row
    and column and the cell labels."""
    grids, positions, rows, cols, anomalous = [], [], [], [], []
    # An image's normal and defective validation items differ only where the defect is: a view whose network
    # inputs are byte-identical to one already scored (same image, same excluded entries) reuses its grid.
    same_source, reused_scope = {}, None
    for position, indexes in _by_exclusion(grouped_views(job.val_views), items):
        item = items[position]
        image, mask = item.load()
        exclude = item.excluded_sources
        scope = (getattr(item, "source_index", None), exclude)   # labelled items (no source) reuse nothing
        if scope != reused_scope or scope[0] is None:
            same_source, reused_scope = {}, scope
        keys = [(index, tuple(hashlib.blake2b(np.ascontiguousarray(level)).digest() for level in index.views(image)))
                for index in indexes]
        new = [(image, index) for index, key in zip(indexes, keys) if key not in same_source]
        computed = iter([grid for features in featurizer.view_batches(new)
                         for grid in detector.patch_scores(features, exclude)])
        scored = [same_source[key] if key in same_source else same_source.setdefault(key, next(computed))
                  for key in keys]
        for index, grid in zip(indexes, scored):
            grids.append(grid)
            positions.append(position)
            rows.append(getattr(index, "row", -1))   # -1: the whole image
            cols.append(getattr(index, "col", -1))
            anomalous.append(cell_labels(_view_mask(mask, index), grid.shape))
    return grids, positions, rows, cols, anomalous


_MINDSPORE_THREADS = []   # what this process gave MindSpore: it takes a thread count once per process


def prepare_worker(run, threads):
    """Set up a worker process for ``run``'s jobs: ``threads`` for MindSpore, BLAS and faiss's OpenMP alike,
    the device and the seed. A process may be set up again for further jobs (a Ray worker is reused)."""
    import src  # noqa: F401  (ONEDNN_MAX_CPU_ISA before mindspore loads)
    from mindspore.device_context.cpu.op_tuning import threads_num
    from threadpoolctl import threadpool_limits
    if not _MINDSPORE_THREADS:
        threads_num(threads)
        _MINDSPORE_THREADS.append(threads)
    threadpool_limits(threads)
    set_device(*run.device, threads=threads, seed=run.seed)


def run_jobs(run, names, report, extractors=None):
    """Train ``names`` one after the other, stopping at the first failure. ``report(kind, name, payload)``
    receives ("done", name, JobResult), ("error", name, message) for bad input, ("crash", name, message) else."""
    extractors = {} if extractors is None else extractors
    for name in names:
        job = run.jobs[name]
        with file_logging(task_logger, os.path.join(run.log_root, f"{name}.log")) as log:
            try:
                featurizer = make_featurizer(job.patch_config, run.meta, run.pre_ckpt_path, extractors,
                                             job.fusion_weights)
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


def is_complete(folder, fingerprint, detector_class, warn):
    """The job's ``folder`` holds a bank that verifies (sha256) and was trained with this exact fingerprint;
    ``warn(message)`` hears why a bank that exists is retrained."""
    if not os.path.isfile(os.path.join(folder, METADATA_FILE)):
        return False
    try:
        detector = detector_class.load(folder)
    except InputError as exc:
        warn(f"{os.path.basename(folder)}: retraining ({exc})")
        return False
    meta = detector.metadata
    if meta.get("fingerprint") != fingerprint:
        return False
    validation = os.path.join(folder, VALIDATION_FILE)
    expected = meta.get("validation_sha256")
    return expected is None or (os.path.isfile(validation) and sha256_of(validation) == expected)


def synthesizer_config(item):
    config = getattr(getattr(item, "synthesizer", None), "config", None)
    return config() if callable(config) else None
