"""High-resolution inference: tile scores -> one full-resolution anomaly map -> image score.

For one image:
1. every tile goes to its task (fixed by the plan, or for Retrieve tasks to the nearest cluster centre);
   the task's bank gives a patch-score grid, passed through the task's normaliser when it has one;
2. each grid is resized bilinearly (half-pixel centres) to its tile's size and the tiles are stitched
   (``src/stitching.py``: overlaps blended with a Hann window, so normal images show no seams);
3. with a thumbnail branch, its normalised grid is resized bilinearly to full resolution and merged
   (``max`` by default: a defect seen by either branch keeps its score; or ``mean``);
4. ONE gaussian at full resolution, ``gaussian_sigma`` full-resolution pixels. Tiles are fed to the
   network unresized, so a feature cell covers as many image pixels as in the reference's 224-pixel
   input (8 for a stride-8 layer) and the reference's sigma of 4 input pixels, half a cell, carries over
   unchanged. Smoothing each tile and then the stitched map would blur twice and cut kernels at seams;
5. image score: the maximum of the map after a moving average (box filter) of ``image_score_window``
   pixels, by default one feature cell. A plain maximum is set by single pixels (a bilinear overshoot,
   a border cell); averaging over one cell first makes the score the strongest cell-sized evidence, so a
   defect as small as one cell still counts fully while a lone spike is diluted (as in HiAD).

The same functions turn validation scores into maps for the thresholds, so offline and online agree.
"""
import functools
import os
import time

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from src.errors import InputError
from src.hr_detector import HRPatchCore
from src.hr_features import HRFeaturizer
from src.io_utils import read_json, write_json, write_text
from src.memory_bank import check_backbone_checkpoint
from src.metrics import compute_imagewise_metrics, compute_pixelwise_metrics, format_table, mean_row
from src.normalization import Thresholds
from src.samples import HRSample
from src.stitching import stitch
from src.tasks import RetrieveTaskGenerator, build_task_generator, load_tasks
from src.visualize import comparison_picture, save_picture

MODEL_FILE = "hr_model.json"
MODEL_FORMAT = "patchcore-ms/hr-model"
TASKS_FILE = "tasks.json"
THUMBNAIL = "thumbnail"


def default_evaluators(resize=512):
    """HiAD's CPU evaluators: image AUROC; pixel AUROC, AP, max-F1 and PRO at ``resize`` (GT max-pooled)."""
    return [compute_imagewise_metrics, functools.partial(compute_pixelwise_metrics, resize=resize)]


def evaluate_maps(evaluators, scores, labels, maps, masks):
    """The evaluators' metrics merged into one dict (HiAD's ``ev(scores, labels, maps, masks) -> dict``)."""
    metrics = {}
    for evaluator in evaluators:
        metrics.update(evaluator(scores, labels, maps, masks))
    return metrics


def tile_map(grid, box):
    """[h, w] grid -> the tile's [height, width] map (bilinear, half-pixel centres)."""
    return cv2.resize(np.asarray(grid, np.float32), (box.width, box.height), interpolation=cv2.INTER_LINEAR)


def compose_anomaly_map(tile_grids, image_size, thumbnail_grid=None, merge="max", sigma=4.0):
    """Full-resolution float32 [H, W] map from [(TileIndex, normalised grid)] (+ thumbnail grid); see module doc."""
    width, height = image_size
    amap = stitch([tile_map(grid, index.main_index) for index, grid in tile_grids],
                  [index for index, _ in tile_grids], image_size)
    if thumbnail_grid is not None:
        thumb = cv2.resize(np.asarray(thumbnail_grid, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        amap = np.maximum(amap, thumb) if merge == "max" else (amap + thumb) * np.float32(0.5)
    return gaussian_filter(amap, sigma=sigma).astype(np.float32) if sigma else amap


def image_score(amap, window):
    """Max of the map after a ``window`` x ``window`` moving average (module doc, step 5)."""
    return float((cv2.blur(amap, (window, window)) if window > 1 else amap).max())


def cell_labels(mask, grid):
    """[h, w] bool: a feature cell is anomalous when any mask pixel under it is (area fraction > 0)."""
    return cv2.resize(np.asarray(mask, np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA) > 0


class HRModel:
    """A trained high-resolution model, loaded for scoring. Build it with :meth:`load`."""

    def __init__(self, meta, tasks, indexes, detectors, featurizers, task_generator=None):
        self.meta, self.tasks, self.indexes = meta, tasks, indexes
        self.detectors, self.featurizers = detectors, featurizers
        self.image_size = tuple(meta["image_size"])
        self.settings = meta["inference"]
        self.task_generator = task_generator or routing_generator(meta, tasks)

    @classmethod
    def load(cls, checkpoint_root, pre_ckpt_path=None, task_generator=None, extractors=None):
        """Read ``hr_model.json``, ``tasks.json`` and every verified bank; build the feature extractors.

        ``pre_ckpt_path`` must be the backbone the model was trained with (checked by sha256).
        ``extractors``: an optional {patch-config key: extractor} cache shared with the caller.
        """
        meta = cls.read_meta(checkpoint_root)
        check_backbone_checkpoint(meta, pre_ckpt_path, "pre_ckpt_path")
        tasks, indexes = load_tasks(os.path.join(checkpoint_root, TASKS_FILE))
        detectors = load_detectors(checkpoint_root, meta)
        extractors = {} if extractors is None else extractors
        featurizers = {name: make_featurizer(detector.patch_config, meta, pre_ckpt_path, extractors,
                                             meta["fusion_weights"] if name != THUMBNAIL else None)
                       for name, detector in detectors.items()}
        return cls(meta, tasks, indexes, detectors, featurizers, task_generator)

    @staticmethod
    def read_meta(checkpoint_root):
        """The contents of ``hr_model.json`` (an InputError when training has not finished)."""
        meta_path = os.path.join(checkpoint_root, MODEL_FILE)
        if not os.path.isfile(meta_path):
            hint = " (training did not finish: run it again to resume)" if os.path.isfile(
                os.path.join(checkpoint_root, TASKS_FILE)) else " (train it first)"
            raise InputError(meta_path, f"no high-resolution model here{hint}")
        meta = read_json(meta_path, "model file")
        if meta.get("format") != MODEL_FORMAT:
            raise InputError(meta_path, f"not a high-resolution model file (format {meta.get('format')!r})")
        return meta

    def assignment(self, image):
        """[(task, [tiles])] for one image (see :func:`assign_tiles`)."""
        return assign_tiles(image, self.tasks, self.indexes, self.task_generator)

    def grids(self, image, assignment=None):
        """([(TileIndex, normalised grid)], normalised thumbnail grid or None) of one image."""
        check_image_size(image, self.image_size)
        tile_grids = []
        for task, tiles in assignment or self.assignment(image):
            detector, featurizer = self.detectors[task.name], self.featurizers[task.name]
            for chunk, features in featurizer.tile_batches(image, tiles):
                tile_grids.extend(zip(chunk, detector.normalize(detector.patch_scores(features))))
        thumbnail = None
        if THUMBNAIL in self.detectors:
            detector = self.detectors[THUMBNAIL]
            features = self.featurizers[THUMBNAIL].thumbnail(image, self.settings["thumbnail_size"])
            thumbnail = detector.normalize(detector.patch_scores(features))[0]
        return tile_grids, thumbnail

    def anomaly_map(self, tile_grids, thumbnail_grid):
        return compose_anomaly_map(tile_grids, self.image_size, thumbnail_grid, self.settings["thumbnail_merge"],
                                   self.settings["gaussian_sigma"])

    def predict(self, image):
        """(image score, [H, W] anomaly map) of an HxWx3 uint8 image of the model's size."""
        amap = self.anomaly_map(*self.grids(image))
        return image_score(amap, self.settings["image_score_window"]), amap


def routing_generator(meta, tasks):
    """The generator that routes the test tiles of a Retrieve model (tasks with centres) as training described
    it in ``hr_model.json``; None when the task map is fixed."""
    if all(task.center is None for task in tasks):
        return None
    spec = meta.get("task_generator") or {}
    if spec.get("name") is not None:
        return build_task_generator(spec["name"], **(spec.get("params") or {}))
    return RetrieveTaskGenerator(len(tasks), fusion_weights=meta["fusion_weights"])


def assign_tiles(image, tasks, indexes, task_generator=None):
    """[(task, [tiles])] for one HxWx3 image: the plan's, or with a routing ``task_generator`` (Retrieve
    models) each tile of ``indexes`` given to the task of its nearest centre."""
    if all(task.center is None for task in tasks):
        return [(task, task.indexes) for task in tasks]
    routed = task_generator.route(HRSample(image), list(indexes), tasks)
    return [(task, [index for index, chosen in zip(indexes, routed) if chosen is task]) for task in tasks]


def load_detectors(checkpoint_root, meta):
    """{job name: HRPatchCore} of every bank in ``hr_model.json``'s jobs, each verified (sha256, fingerprint)."""
    detectors = {name: HRPatchCore.load(os.path.join(checkpoint_root, name)) for name in meta["jobs"]}
    for name, detector in detectors.items():
        if detector.metadata.get("fingerprint") != meta["jobs"][name]["fingerprint"]:
            raise InputError(os.path.join(checkpoint_root, name), "bank belongs to another training run")
    return detectors


def check_image_size(image, image_size):
    if (image.shape[1], image.shape[0]) != tuple(image_size):
        raise InputError(f"image is {image.shape[1]}x{image.shape[0]} but the model's tile plan is for "
                         f"{image_size[0]}x{image_size[1]}: give HRSample(image_size=...)")


def make_featurizer(patch_config, meta, pre_ckpt_path, extractors, fusion_weights):
    """An HRFeaturizer; extractors with the same architecture are built once and shared via ``extractors``."""
    from src.patchcore import build_extractor, extractor_key
    key = extractor_key(patch_config)
    if key not in extractors:
        extractors[key] = build_extractor(patch_config, pre_ckpt_path, meta["seed"])[0]
    data = meta["data"]
    return HRFeaturizer(extractors[key], data["mean"], data["std"], meta["batch_size"], fusion_weights)


def _small(array, scale, interpolation):
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    return array if scale >= 1 else cv2.resize(array, size, interpolation=interpolation)


def run_inference(model, samples, evaluators=None, return_results_only=False, clsname="unknown", names=None,
                  results_root=None, vis_root=None, vis_size=1024, log=None):
    """Score ``samples``; either return (image_scores, anomaly_maps) or evaluate, print and save the results.

    Evaluators follow HiAD: ``ev(prediction_scores, gt_labels, prediction_masks, gt_masks) -> dict``.
    Returns {"metrics", "images" (per-image name, label, score), "table"}, or the pair when ``return_results_only``.
    """
    started = time.perf_counter()
    samples = list(samples)
    if not samples:
        raise InputError("test_samples", "no test samples")
    names = names or [f"{i:03d}_{os.path.splitext(s.name)[0]}" for i, s in enumerate(samples)]
    scores, maps, masks, pictures = [], [], [], []
    for position, sample in enumerate(samples):
        image = sample.load_image()
        score, amap = model.predict(image)
        scores.append(score)
        maps.append(amap)
        if log:
            log.info("%s: image score %.6g", names[position], score)
        if return_results_only:
            continue
        mask = sample.load_mask()
        masks.append(mask)
        if vis_root:
            scale = min(1.0, vis_size / max(image.shape[:2]))
            pictures.append((_small(image, scale, cv2.INTER_AREA), _small(amap, scale, cv2.INTER_AREA),
                             _small(mask.astype(np.float32), scale, cv2.INTER_AREA) > 0))
    scores = np.asarray(scores, np.float64)
    if return_results_only:
        return scores, maps
    labels = np.asarray([sample.label for sample in samples])
    metrics = evaluate_maps(evaluators if evaluators is not None else default_evaluators(), scores, labels, maps, masks)
    columns = ["clsname"] + list(metrics)
    rows = [dict(clsname=clsname, **metrics)]
    table = format_table(rows + [mean_row(rows, columns)], columns)
    print(table)
    thresholds = model.meta.get("thresholds")
    image_threshold = None if thresholds is None else Thresholds.from_dict(thresholds).image
    per_image = [{"name": name, "label": int(label), "image_score": float(score),
                  **({} if image_threshold is None else {"predicted_anomalous": bool(score >= image_threshold)})}
                 for name, label, score in zip(names, labels, scores)]
    if results_root:
        write_json(os.path.join(results_root, "results.json"),
                   {"rows": rows, "mean": mean_row(rows, columns), "thresholds": thresholds, "images": per_image,
                    "seconds": round(time.perf_counter() - started, 3)})
        write_text(os.path.join(results_root, "results.md"), table + "\n")
    if vis_root:
        os.makedirs(vis_root, exist_ok=True)
        vmin, vmax = min(float(p[1].min()) for p in pictures), max(float(p[1].max()) for p in pictures)
        for name, (rgb, amap, mask) in zip(names, pictures):
            save_picture(os.path.join(vis_root, f"{name}.png"), comparison_picture(rgb, amap, mask, vmin, vmax))
    return {"metrics": metrics, "images": per_image, "table": table}
