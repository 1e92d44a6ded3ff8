"""src/evaluation/metrics.py: the decisions a model makes at its persisted thresholds, counted."""
import numpy as np
import pytest

import src  # noqa: F401
from src.evaluation.metrics import DECISION_KEYS, decision_metrics


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
