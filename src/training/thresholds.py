"""The trained model's image and pixel thresholds, from its validation images' scores and maps.

The validation images are scored as the model's own inference (``Model.predict_images``) and eval.py score them;
those in the bank without the entries of their own image (or, with ``val_config.folds``, of every training image in
their fold). Where the jobs stored their raw validation grids when they fitted their normalisers
(``validation.npz``), the scores are composed from those grids instead: each image is scored once, not twice.
"""
import logging
import os

import numpy as np

from src.evaluation.evaluate import evaluate_maps
from src.evaluation.metrics import decision_metrics
from src.decisions.thresholds import NG, REVIEW, choose_thresholds, decide
from src.patchcore.normalization import ScoreNormalizer
from src.training.jobs import VALIDATION_FILE

# Fewer validation images than this make a threshold a guess: training says so.
MIN_VALIDATION_NORMAL, MIN_VALIDATION_ANOMALOUS = 10, 10


def rate(hits, total):
    """'0.80 (8/10, 95% interval 0.49-0.94)': a rate with its Wilson interval, since validation sets are small."""
    if not total:
        return "n/a"
    from scipy.stats import binomtest
    interval = binomtest(int(hits), int(total)).proportion_ci(method="wilson")
    return f"{hits / total:.2f} ({hits}/{total}, 95% interval {interval.low:.2f}-{interval.high:.2f})"


def decision_rates(scores, labels, thresholds):
    """'recall <rate>, false-alarm rate <rate>' of the NG label on labelled ``scores``; with a review band also
    the share sent to review and those rates among the images decided outside it."""
    decided = decide(scores, thresholds.image, thresholds.review)
    defective, good = labels == 1, labels == 0
    text = (f"recall {rate(int((decided[defective] == NG).sum()), int(defective.sum()))}, false-alarm rate "
            f"{rate(int((decided[good] == NG).sum()), int(good.sum()))}")
    if thresholds.review is None:
        return text
    outside = decided != REVIEW
    return (f"{text}; review threshold {thresholds.review:.4g} ({thresholds.review_method}) sends "
            f"{rate(int((~outside).sum()), len(labels))} to review; outside the band: recall "
            f"{rate(int((decided[defective & outside] == NG).sum()), int((defective & outside).sum()))}, "
            f"false-alarm rate {rate(int((decided[good & outside] == NG).sum()), int((good & outside).sum()))}")


def validation_batches(items, batch_size):
    """Yield ([(position in ``items``, item)], excluded bank sources or None), ``batch_size`` items at a time: the
    items with the same exclusion (their own image, their fold, or none: not in the bank) one batch after the
    other, so each bank is rebuilt without a set of sources once (a detector keeps only the last such bank)."""
    groups = {}
    for position, item in enumerate(items):
        groups.setdefault(item.excluded_sources, []).append((position, item))
    for excluded, members in groups.items():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size], excluded


def stored_grids(jobs, items, detectors, indexes, folders):
    """Per validation item of ``items``, what ``Model.grids`` gives for it (tile grids, thumbnail grid, weights),
    rebuilt from the raw grids each of the ``jobs`` stored in ``folders[job]/validation.npz``."""
    by_position = {(index.row, index.col): index for index in indexes}
    tiles, thumbnails = [[] for _ in items], [None] * len(items)
    for name, job in jobs.items():   # the tasks in Model.grids' order, then the thumbnail
        if not job.val_views:
            continue   # a routed task no validation tile went to
        with np.load(os.path.join(folders[name], VALIDATION_FILE)) as stored:
            grids = detectors[name].normalize(stored["grids"])
            for grid, item, row, col in zip(grids, stored["items"], stored["rows"], stored["cols"]):
                if row < 0:
                    thumbnails[item] = grid
                else:
                    tiles[item].append((by_position[(int(row), int(col))], grid))
    return [(tile_grids, thumbnail, [None] * (len(tile_grids) + (thumbnail is not None)))
            for tile_grids, thumbnail in zip(tiles, thumbnails)]


def validation_results(model, items, stored, batch_size):
    """(score, map, mask) per validation item, in order: composed from ``stored`` grids, or scored by ``model``."""
    if stored is not None:
        for item, grids in zip(items, stored):
            yield *model.scorer(*grids), item.load()[1]
        return
    results = [None] * len(items)
    for batch, excluded in validation_batches(items, batch_size):
        loaded = [item.load() for _, item in batch]
        for (position, _), (score, amap), (_, mask) in zip(
                batch, model.predict_images([image for image, _ in loaded], excluded), loaded):
            results[position] = (score, amap, mask)
    yield from results


def model_thresholds(results, items, policy, val_config, say):
    """Thresholds (a ``ThresholdPolicy``) from ``results`` (:func:`validation_results`) of the validation ``items``;
    says the rates they give on them. Returns (thresholds, score normaliser dict, metrics, raw image scores)."""
    scores, maps, masks = (list(column) for column in zip(*results))
    labels = np.asarray([item.label for item in items])
    scores = np.asarray(scores)
    thresholds = choose_thresholds(scores[labels == 0], scores[labels == 1], maps, masks, policy=policy)
    decision = decision_metrics(scores, labels, maps, masks, thresholds.to_dict())
    in_bank = sum(item.excluded_sources is not None for item in items)
    folds = None if val_config is None else val_config.folds
    say("Thresholds (%s) from %d validation images (%d anomalous%s): image %.4g, pixel %.4g; on them: %s",
        policy.ng, len(labels), int(labels.sum()),
        "" if not in_bank else f"; {in_bank} also in the bank, scored without " +
        ("their own entries" if folds is None else f"their fold's entries ({folds} folds)"),
        thresholds.image, thresholds.pixel, decision_rates(scores, labels, thresholds))
    if (labels == 0).sum() < MIN_VALIDATION_NORMAL or labels.sum() < MIN_VALIDATION_ANOMALOUS:
        say("Warning: %d normal and %d anomalous validation images are too few to set a threshold reliably "
            "(at least %d and %d): raise val_config.val_images or val_sample_ratio, or check the rates on "
            "labelled images with eval.py", int((labels == 0).sum()), int(labels.sum()), MIN_VALIDATION_NORMAL,
            MIN_VALIDATION_ANOMALOUS, level=logging.WARNING)
    # score normaliser: raw scores to [0, 1] with the image threshold at 0.5 (predict.py's image score)
    normalizer = ScoreNormalizer.at_threshold(scores[labels == 0], thresholds.image).to_dict()
    metrics = None
    if val_config is not None and val_config.evaluators:
        metrics = evaluate_maps(val_config.evaluators, scores, labels, maps, masks)
        say("Validation metrics: %s", metrics)
    return thresholds, normalizer, dict(decision, **({} if metrics is None else metrics)), scores


def fit_thresholds(model, items, stored, batch_size, policy, val_config, meta, say):
    """Set ``meta``'s thresholds, score normaliser and validation metrics from the validation ``items`` scored by
    ``model`` (or composed from ``stored`` grids), and record each item's raw score there (the threshold can be
    re-chosen from model.json)."""
    results = validation_results(model, items, stored, batch_size)
    thresholds, meta["score_normalizer"], meta["validation"]["metrics"], scores = \
        model_thresholds(results, items, policy, val_config, say)
    meta["thresholds"] = thresholds.to_dict()
    for record, score in zip(meta["validation"]["items"], scores):
        record["score"] = float(score)
