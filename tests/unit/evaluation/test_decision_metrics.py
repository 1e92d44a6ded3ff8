"""src/evaluation/metrics.py: the decisions a model makes at its persisted thresholds, counted."""
import numpy as np
import pytest

import src  # noqa: F401
from src.evaluation.metrics import DECISION_KEYS, REVIEW_KEYS, decision_metrics


def test_decision_metrics_count_what_the_threshold_flags():
    scores = [0.1, 0.2, 0.6, 0.7, 0.4, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    masks = [np.zeros((4, 4), np.uint8)] * 3 + [np.eye(4, dtype=np.uint8)] * 3
    maps = [m.astype(np.float32) * 0.9 for m in masks]
    metrics = decision_metrics(scores, labels, maps, masks, {"image": 0.5, "pixel": 0.5},
                               ["good", "good", "good", "cut", "cut", "hole"])
    assert set(DECISION_KEYS) <= set(metrics)
    assert metrics["image_recall"] == pytest.approx(2 / 3) and metrics["image_fpr"] == pytest.approx(1 / 3)
    assert metrics["image_precision"] == pytest.approx(2 / 3) and metrics["image_f1_at_threshold"] == pytest.approx(2 / 3)
    assert metrics["pixel_f1_at_threshold"] == 1.0
    assert metrics["recall_per_defect_type"] == {"cut": 0.5, "hole": 1.0}
    assert decision_metrics(scores, labels, maps, masks, None) == {}


def test_review_metrics_count_the_band_and_what_is_decided_outside_it():
    scores = [0.1, 0.45, 0.6, 0.3, 0.45, 0.9, 0.95]
    labels = [0, 0, 0, 1, 1, 1, 1]
    metrics = decision_metrics(scores, labels, None, None, {"image": 0.5, "review": 0.4})
    assert set(REVIEW_KEYS) <= set(metrics) and metrics["review_threshold"] == 0.4
    assert metrics["review_share"] == pytest.approx(2 / 7)            # the two 0.45
    assert metrics["recall_outside_review"] == pytest.approx(2 / 3)   # 0.9, 0.95 NG; 0.3 OK
    assert metrics["fpr_outside_review"] == pytest.approx(1 / 2)      # 0.6 NG; 0.1 OK
    assert metrics["wrong_outside_review"] == pytest.approx(2 / 7)    # 0.6 as NG, 0.3 as OK
    no_band = decision_metrics(scores, labels, None, None, {"image": 0.5})
    assert no_band["review_share"] == 0 and no_band["review_threshold"] is None
    assert no_band["wrong_outside_review"] == pytest.approx(3 / 7)    # 0.6 as NG, 0.3 and 0.45 as OK
