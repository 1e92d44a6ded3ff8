"""postprocess.py's work: the C++ runner's outputs -> score grids -> maps, image scores and metrics.

Each task folder's score grids (the runner's ``<stem>_scores.npy``, or its features scored here with the task's
bank) go through the task's normaliser and the model's ``ImageScorer`` (``src.patchcore.scoring``), as in
``Model.predict``, so the numbers are eval.py's, and each image's label and regions are predict.py's. Fused tiles: the runner only computes the
features of every level, fused here with ``fuse_levels`` and scored in Python. A policy that needs the bank (``reweighted``) gets
each grid's max-cell weight from the runner's features (runner_jobs has it keep them).
"""
import os

import numpy as np

from src.data.sample import view_from_dict
from src.deploy.export import EXPORT_FILE
from src.deploy.package import job_path, one_source, runner_features, score_grids, scoring_jobs, verify_files
from src.evaluation.evaluate import default_evaluators, evaluate_maps, with_decisions
from src.decisions.thresholds import OK, DecisionRule
from src.inference.model import MODEL_FILE
from src.inference.predict import make_prediction
from src.patchcore.detector import PatchCoreDetector
from src.patchcore.featurizer import fuse_levels
from src.patchcore.scoring import ImageScorer, build_image_score
from src.tiling.plan import TileIndex
from src.utils.io import staged_folder


def file_stem(file):
    return os.path.splitext(os.path.basename(file))[0]


def input_features(folder, entry, job, weights):
    """The runner's [1, D, h, w] features of one input; a fused tile's levels fused as the Featurizer does."""
    if "context_files" not in entry:
        return runner_features(folder, file_stem(entry["file"]), job)
    files = [entry["file"]] + entry["context_files"]
    levels = [None if weight == 0 else runner_features(folder, file_stem(file), job)
              for file, weight in zip(files, weights)]
    return fuse_levels(levels, [TileIndex.from_dict(entry["tile"])], weights)


def job_grids(job, entries, export_dir, result_path, weights, policy):
    """(normalised [h, w] score grid per input of ``entries``, the ``policy``'s max-cell weight per input or
    None each, "cpp"|"python") of one scoring job."""
    folder, bank_dir = job_path(result_path, job), job_path(export_dir, job)

    def python_scores():
        """Fused tiles, or the runner run without --bank_path: scored with the task's bank."""
        detector = PatchCoreDetector.load(bank_dir)
        detector.bank.use_search(job.get("search"))   # as the runner would search (exports before it: exact)
        return [detector.patch_scores(input_features(folder, entry, job, weights))[0] for entry in entries]

    raw, source = score_grids(folder, [file_stem(entry["file"]) for entry in entries], job, python_scores)
    # The normaliser is in bank.json: the index is read only when Python scores or weighs.
    grids = PatchCoreDetector.load(bank_dir, index=False).normalize(np.stack(raw))
    if not policy.needs_weights:
        return grids, [None] * len(grids), source
    detector = PatchCoreDetector.load(bank_dir)
    cell_weights = [detector.max_cell_weights(input_features(folder, entry, job, weights), grid[None],
                                              policy.num_nn)[0] for entry, grid in zip(entries, raw)]
    return grids, cell_weights, source


def anomaly_maps(meta, export_dir, result_path, items):
    """(image scores, [H, W] maps, "cpp"|"python") from the runner's outputs: per-tile score grids -> the
    task's normaliser -> compose_anomaly_map -> the image-score policy, as Model.predict does."""
    hr = meta["hr"]
    scorer = ImageScorer(hr["image_size"], build_image_score(hr["image_score"]), hr["thumbnail_merge"],
                         hr["gaussian_sigma"])
    entries = {job["name"]: [] for job in scoring_jobs(meta)}
    for item, _ in items:
        for entry in item["inputs"]:
            entries[entry["task"]].append(entry)
    jobs = [job for job in scoring_jobs(meta) if entries[job["name"]]]  # a routed task may have received no tile
    # Only bank.json against export.json: PatchCoreDetector.load checks an index it reads against bank.json's sha256
    # (the same digest), so an index is hashed once.
    verify_files(export_dir, meta, [job["bank_metadata"] for job in jobs])
    grids, sources = {}, []
    for job in jobs:
        job_scores, cell_weights, source = job_grids(job, entries[job["name"]], export_dir, result_path,
                                                     hr.get("fusion_weights"), scorer.policy)
        grids[job["name"]] = iter(zip(job_scores, cell_weights))
        sources.append(source)
    scores, maps = [], []
    for item, _ in items:
        tile_grids, thumbnail, tile_weights, thumbnail_weight = [], None, [], []
        for entry in item["inputs"]:
            grid, weight = next(grids[entry["task"]])
            if entry["tile"] is None:
                thumbnail, thumbnail_weight = grid, [weight]
            else:
                tile_grids.append((TileIndex.from_dict(entry["tile"]), grid))
                tile_weights.append(weight)
        score, amap = scorer(tile_grids, thumbnail, tile_weights + thumbnail_weight)
        scores.append(score)
        maps.append(amap)
    return np.asarray(scores, np.float64), maps, one_source(sources, result_path)


def prediction_name(path):
    """'scratch/000.png' -> 'scratch__000': unique within a dataset, as predict.py names files below a folder."""
    return os.path.splitext(path)[0].replace("/", "__").replace(os.sep, "__")


def evaluate(meta, export_dir, result_path, items, dataset_path, picture_dir):
    """(image scores, metrics, predictions, score source) with eval.py's evaluators (pixel metrics at
    eval_resize). predictions: predict.py's fields per image (label, regions), the picture of every NG or REVIEW image
    written into ``picture_dir``; None when the export holds no thresholds (trained with val_config: null)."""
    scores, maps, source = anomaly_maps(meta, export_dir, result_path, items)
    view = view_from_dict(meta["preprocess"]["view"])
    samples = [sample.with_view(view) for _, sample in items]
    masks = [sample.load_mask() for sample in samples]
    labels = np.asarray([sample.label for sample in samples])
    hr = meta["hr"]
    evaluators = with_decisions(default_evaluators(hr["eval_resize"]), hr.get("thresholds"),
                                [sample.defect_type for sample in samples], hr["eval_resize"])
    predictions = None
    if hr.get("thresholds") and hr.get("score_normalizer"):
        rule = DecisionRule(hr["thresholds"], hr["score_normalizer"], os.path.join(export_dir, EXPORT_FILE))
        identity = {"name": meta["category"], "version": meta["source"].get("model_version", 1),
                    "sha256": meta["files"][MODEL_FILE]}
        predictions = []
        with staged_folder(picture_dir) as stage:   # replaced as a whole: no picture left from an earlier run
            for sample, score, amap in zip(samples, scores, maps):
                name = prediction_name(os.path.relpath(sample.image_path, dataset_path))
                prediction = make_prediction(name, sample, score, amap, rule, identity)
                if prediction.label != OK:
                    prediction.save_to_img(stage)
                predictions.append(prediction.to_dict())
    return scores, evaluate_maps(evaluators, scores, labels, maps, masks), predictions, source
