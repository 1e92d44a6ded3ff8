"""A trained model, loaded for scoring: ``model.json`` + ``tasks.json`` + one verified bank per task.

Every trained model folder, tiled or not, has the same layout: ``model.json`` (the manifest: format version,
config, the image view, tile plan and tasks file, every bank's fingerprint and sha256, normalisers via the
banks, image-score policy, thresholds, backbone checkpoint sha256, versions), ``tasks.json`` (the plan and
which task scores which tile), ``task_<k>/`` (``faiss.index`` + ``bank.json``) and, with a thumbnail branch,
``thumbnail/``; a model taught since (teach.py) also has ``versions/`` (``src/inference/versions.py``), and its
model.json says where each bank of the active version lies. A 224-pixel model is the one-tile case: a
``ResizeCrop`` view, one tile covering it, one task, no thumbnail and the ``max`` image score.

For one image (``src/patchcore/scoring.py``): tiles go to their task (fixed by the plan, or for Retrieve
tasks to the nearest cluster centre), each task's bank gives a patch-score grid through the task's
normaliser, the grids are composed into one full-resolution map and the image score follows the model's
policy. Images are batched ``batch_size`` network inputs at a time across images.
"""
import os
import time

from src.data.sample import view_from_dict
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.extractor import build_extractor, check_backbone_checkpoint, extractor_key
from src.patchcore.featurizer import Featurizer
from src.patchcore.scoring import ImageScorer, build_image_score
from src.tiling.plan import WholeImage
from src.tiling.tasks import assign_tiles, load_tasks, routing_generator
from src.inference.versions import MODEL_FILE, meta_path
from src.utils.errors import InputError
from src.utils.io import read_json

MODEL_FORMAT = "patchcore-ms/model"
MODEL_VERSION = 2
TASKS_FILE = "tasks.json"
THUMBNAIL = "thumbnail"
# What models written before model.json left in their folder.
LEGACY_FILES = ("hr_model.json", "bank.json")


class Model:
    """A trained model, loaded for scoring. Build it with :meth:`load`."""

    def __init__(self, meta, tasks, indexes, detectors, featurizers, task_generator=None):
        self.meta, self.tasks, self.indexes = meta, tasks, indexes
        self.detectors, self.featurizers = detectors, featurizers
        self.view = view_from_dict(meta["view"])
        self.image_size = tuple(meta["image_size"])
        self.settings = meta["inference"]
        self.scorer = ImageScorer(self.image_size, build_image_score(meta["image_score"]),
                                  self.settings["thumbnail_merge"], self.settings["gaussian_sigma"])
        self.batch_size = int(meta["batch_size"])
        self.task_generator = task_generator or routing_generator(meta.get("task_generator"), tasks,
                                                                  meta["fusion_weights"])
        # seconds spent since loading: network (inputs and features), scoring (bank search and normaliser), map
        # (composition, stitching, smoothing, image score); predict.py prints them per image
        self.timings = {"network": 0.0, "scoring": 0.0, "map": 0.0}

    @property
    def compile_seconds(self):
        """The networks' first calls per input size (graph compiles), kept out of ``timings``."""
        return sum(featurizer.compile_seconds for featurizer in self.featurizers.values())

    @classmethod
    def load(cls, checkpoint_root, pre_ckpt_path=None, task_generator=None, extractors=None, version=None):
        """Read ``model.json``, ``tasks.json`` and every verified bank; build the feature extractors.

        ``pre_ckpt_path`` must be the backbone the model was trained with (checked by sha256).
        ``extractors``: an optional {patch-config key: extractor} cache shared with the caller.
        ``version``: a version of the folder (``src/inference/versions.py``) other than the active one.
        """
        meta = cls.read_meta(checkpoint_root, version)
        check_backbone_checkpoint(meta, pre_ckpt_path)
        tasks, indexes = load_tasks(os.path.join(checkpoint_root, TASKS_FILE))
        detectors = load_detectors(checkpoint_root, meta)
        extractors = {} if extractors is None else extractors
        for detector in detectors.values():   # models trained before the setting: exact
            detector.bank.use_search(meta["inference"].get("search"))
        return cls(meta, tasks, indexes, detectors, make_featurizers(detectors, meta, pre_ckpt_path, extractors),
                   task_generator)

    @staticmethod
    def read_meta(checkpoint_root, version=None):
        """The contents of ``model.json``, or of version ``version``'s (an InputError when training has not finished,
        the version does not exist or the folder holds a model of an older format)."""
        path = meta_path(checkpoint_root, version)
        if not os.path.isfile(path):
            legacy = [name for name in LEGACY_FILES if os.path.isfile(os.path.join(checkpoint_root, name))]
            if legacy:
                raise InputError(os.path.join(checkpoint_root, legacy[0]), "a model of an older version (before "
                                 f"{MODEL_FILE}): retrain it with train.py")
            hint = " (training did not finish: run it again to resume)" if os.path.isfile(
                os.path.join(checkpoint_root, TASKS_FILE)) else " (train it first)"
            raise InputError(path, f"no trained model here{hint}")
        meta = read_json(path, "model file")
        if meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_VERSION:
            raise InputError(path, f"not a model file of version {MODEL_VERSION} (format "
                                        f"{meta.get('format')!r}, version {meta.get('version')!r}): retrain it")
        return meta

    def prepare(self, sample):
        """``sample`` seen through the model's view (a sample with a view of its own is kept as it is)."""
        return sample if sample.view is not None else sample.with_view(self.view)

    def assignment(self, image):
        """[(task, [tiles])] for one image (see :func:`src.tiling.tasks.assign_tiles`)."""
        return assign_tiles(image, self.tasks, self.indexes, self.task_generator)

    def grids(self, images, exclude_sources=None):
        """Per image: ([(TileIndex, normalised grid)], normalised thumbnail grid or None, the policy's max-cell
        weight per grid, tiles then thumbnail, each None when the policy needs none). ``exclude_sources``: training
        images' positions (a tuple), to score without the bank entries they contributed (validation)."""
        for image in images:
            check_image_size(image, self.image_size)
        tiles_of, thumbnails = [[] for _ in images], [None] * len(images)
        weights_of = [[] for _ in images]
        views = {}
        for position, image in enumerate(images):
            for task, tiles in self.assignment(image):
                views.setdefault(task.name, []).extend((position, image, tile) for tile in tiles)
        for name, entries in views.items():
            for (position, _, tile), (grid, weight) in zip(
                    entries, self._scores(name, [(i, t) for _, i, t in entries], exclude_sources)):
                tiles_of[position].append((tile, grid))
                weights_of[position].append(weight)
        if THUMBNAIL in self.detectors:
            whole = WholeImage(tuple(self.settings["thumbnail_size"]))
            for position, (grid, weight) in enumerate(self._scores(THUMBNAIL, [(image, whole) for image in images],
                                                                   exclude_sources)):
                thumbnails[position] = grid
                weights_of[position].append(weight)
        return list(zip(tiles_of, thumbnails, weights_of))

    def _scores(self, name, views, exclude_sources=None):
        """Yield (normalised grid, max-cell weight or None) of every view, scored by task ``name``."""
        detector, featurizer = self.detectors[name], self.featurizers[name]
        policy = self.scorer.policy
        batches = featurizer.view_batches(views)
        while True:
            started, compiled = time.perf_counter(), featurizer.compile_seconds
            features = next(batches, None)
            scored = time.perf_counter()
            self.timings["network"] += scored - started - (featurizer.compile_seconds - compiled)
            if features is None:
                return
            raw = detector.patch_scores(features, exclude_sources)
            weights = detector.max_cell_weights(features, raw, policy.num_nn, exclude_sources) \
                if policy.needs_weights else [None] * len(raw)
            grids = detector.normalize(raw)
            self.timings["scoring"] += time.perf_counter() - scored
            yield from zip(grids, weights)

    def predict_images(self, images, exclude_sources=None):
        """[(image score, [H, W] anomaly map)] of HxWx3 uint8 images of the model's size (``exclude_sources``: see
        :meth:`grids`)."""
        results = []
        for tile_grids, thumbnail, weights in self.grids(images, exclude_sources):
            started = time.perf_counter()
            results.append(self.scorer(tile_grids, thumbnail, weights))
            self.timings["map"] += time.perf_counter() - started
        return results

    def predict(self, image):
        """(image score, [H, W] anomaly map) of one HxWx3 uint8 image of the model's size."""
        return self.predict_images([image])[0]

    def predict_samples(self, samples):
        """Yield (sample seen through the model's view, its HxWx3 image, image score, map) for ``samples``,
        ``batch_size`` images at a time."""
        samples = [self.prepare(sample) for sample in samples]
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            images = [sample.load_image() for sample in chunk]
            for sample, image, (score, amap) in zip(chunk, images, self.predict_images(images)):
                yield sample, image, score, amap


def job_folder(checkpoint_root, meta, name):
    """Where job ``name``'s bank of the model ``meta`` describes lies: ``<name>/`` as training wrote it, or a taught
    version's ``versions/<n>/<name>/`` (model.json's ``jobs.<name>.folder``)."""
    return os.path.join(checkpoint_root, meta["jobs"][name].get("folder", name))


def load_detectors(checkpoint_root, meta):
    """{job name: PatchCoreDetector} of every bank in ``model.json``'s jobs, each verified (sha256, fingerprint)."""
    detectors = {name: PatchCoreDetector.load(job_folder(checkpoint_root, meta, name)) for name in meta["jobs"]}
    for name, detector in detectors.items():
        if detector.metadata.get("fingerprint") != meta["jobs"][name]["fingerprint"]:
            raise InputError(job_folder(checkpoint_root, meta, name), "bank belongs to another training run")
    return detectors


def recorded_checkpoint(meta, model_dir, pre_ckpt_path=None):
    """The backbone checkpoint to load the model ``meta`` with: ``pre_ckpt_path`` when given, else the one model.json
    records (an InputError when it is not there; None for a model of seeded random weights)."""
    if pre_ckpt_path is not None or meta.get("backbone_checkpoint_sha256") is None:
        return pre_ckpt_path
    recorded = meta.get("backbone_checkpoint")
    if not recorded or not os.path.isfile(recorded):
        raise InputError(recorded or os.path.join(model_dir, MODEL_FILE),
                         "the model's backbone checkpoint is not there: pass it with --pre_ckpt_path")
    return recorded


def check_image_size(image, image_size):
    if (image.shape[1], image.shape[0]) != tuple(image_size):
        raise InputError(f"image is {image.shape[1]}x{image.shape[0]} but the model's tile plan is for "
                         f"{image_size[0]}x{image_size[1]}: give Sample(image_size=...)")


def make_featurizers(detectors, meta, pre_ckpt_path, extractors):
    """{job: Featurizer} for ``detectors``: the tasks' with the model's fusion weights, the thumbnail's without."""
    return {name: make_featurizer(detector.patch_config, meta, pre_ckpt_path, extractors,
                                  meta["fusion_weights"] if name != THUMBNAIL else None)
            for name, detector in detectors.items()}


def make_featurizer(patch_config, meta, pre_ckpt_path, extractors, fusion_weights):
    """A Featurizer; extractors with the same architecture are built once and shared via ``extractors``."""
    key = extractor_key(patch_config)
    if key not in extractors:
        extractors[key] = build_extractor(patch_config, pre_ckpt_path, meta["seed"])[0]
    data = meta["data"]
    return Featurizer(extractors[key], data["mean"], data["std"], meta["batch_size"], fusion_weights)
