"""Evaluation: a model's maps and scores for labelled test samples, the metrics, the table and pictures.

Evaluators follow HiAD: ``ev(prediction_scores, gt_labels, prediction_masks, gt_masks) -> dict``; the defaults
give image AUROC and the pixel metrics (AUROC, AP, max-F1, PRO), at ``eval_resize`` for large images.
"""
import functools
import os
import time

import cv2
import numpy as np

from src.evaluation.metrics import (compute_imagewise_metrics, compute_pixelwise_metrics, decision_metrics, format_table,
                                    mean_row, operating_points, operating_points_note, OPERATING_KEYS)
from src.evaluation.visualize import comparison_picture, save_picture
from src.decisions.thresholds import Thresholds, decide, flagged
from src.utils.errors import InputError
from src.utils.io import write_json, write_text


def default_evaluators(resize=512):
    """Image AUROC; pixel AUROC, AP, max-F1 and PRO at ``resize`` (GT max-pooled; None: as the maps are)."""
    return [compute_imagewise_metrics, functools.partial(compute_pixelwise_metrics, resize=resize)]


def evaluation_size(model_meta):
    """The size pixel metrics are computed at for a model (its ``model.json``): None, the maps' own size, for a
    224-pixel model (as the reference); else ``hr.eval_resize`` (default 512)."""
    if model_meta["view"]["name"] == "resize_crop":
        return None
    hr = model_meta["config"].get("hr") or {}
    return hr.get("eval_resize", 512)


def with_decisions(evaluators, thresholds, defect_types, resize):
    """``evaluators``, the operating points of the scores (``operating_points``) and, when the model has
    ``thresholds``, the decisions it makes at them (``decision_metrics``): AUROC ranks, users decide."""
    evaluators = list(evaluators) + [functools.partial(operating_points, defect_types=defect_types)]
    if not thresholds:
        return evaluators
    return evaluators + [functools.partial(decision_metrics, thresholds=thresholds, defect_types=defect_types,
                                           resize=resize)]


def evaluate_maps(evaluators, scores, labels, maps, masks):
    """The evaluators' metrics merged into one dict (HiAD's ``ev(scores, labels, maps, masks) -> dict``)."""
    metrics = {}
    for evaluator in evaluators:
        metrics.update(evaluator(scores, labels, maps, masks))
    return metrics


def _small(array, scale, interpolation):
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    return array if scale >= 1 else cv2.resize(array, size, interpolation=interpolation)


def run_inference(model, samples, evaluators=None, return_results_only=False, clsname="unknown", names=None,
                  results_root=None, vis_root=None, vis_size=1024, log=None):
    """Score ``samples``; either return (image_scores, anomaly_maps) or evaluate, print and save the results.

    Evaluators follow HiAD: ``ev(prediction_scores, gt_labels, prediction_masks, gt_masks) -> dict``; None: the
    defaults at the model's evaluation size, with the decisions at its thresholds (``with_decisions``).
    Returns {"metrics", "images" (per-image name, label, score), "table"}, or the pair when ``return_results_only``.
    """
    started = time.perf_counter()
    samples = list(samples)
    if not samples:
        raise InputError("test_samples", "no test samples")
    names = names or [f"{i:03d}_{os.path.splitext(s.name)[0]}" for i, s in enumerate(samples)]
    scores, maps, masks, pictures = [], [], [], []
    for position, (sample, image, score, amap) in enumerate(model.predict_samples(samples)):
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
    thresholds = model.meta.get("thresholds")
    if evaluators is None:   # the defaults, and the decisions at the model's thresholds
        evaluators = with_decisions(default_evaluators(evaluation_size(model.meta)), thresholds,
                                    [sample.defect_type for sample in samples], evaluation_size(model.meta))
    metrics = evaluate_maps(evaluators, scores, labels, maps, masks)
    columns = ["clsname"] + [key for key, value in metrics.items() if not isinstance(value, dict)]
    rows = [dict(clsname=clsname, **metrics)]
    table = format_table(rows + [mean_row(rows, columns)], columns)
    print(table)
    if "image_counts" in metrics and any(metrics[key] is None for key in OPERATING_KEYS):
        print(operating_points_note(metrics["image_counts"]))
    chosen = None if thresholds is None else Thresholds.from_dict(thresholds)
    decisions = None if chosen is None else decide(scores, chosen.image, chosen.review)
    per_image = [{"name": name, "label": int(label), "image_score": float(score),
                  **({} if chosen is None else {"predicted_anomalous": bool(flagged(score, chosen.image)),
                                                "decision": str(decisions[k])})}
                 for k, (name, label, score) in enumerate(zip(names, labels, scores))]
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
