"""src/decisions/thresholds.py: choosing the image and pixel thresholds from validation scores, and the policies."""
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

import src  # noqa: F401
from conftest import just_above
from src.decisions.thresholds import (PIXEL_BINS, ThresholdPolicy, Thresholds, choose_thresholds, parse_threshold_policy,
                                     pixel_threshold)
from src.patchcore.normalization import score_threshold
from src.utils.errors import InputError


def brute_force_best_f1(normal, anomalous):
    scores, labels = np.r_[normal, anomalous], np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return max(f1_score(labels, scores >= t) for t in np.unique(scores))


def separable_maps():
    rng = np.random.default_rng(4)
    maps, masks = [], []
    for k in range(3):
        mask = np.zeros((32, 40), np.uint8)
        if k:
            mask[5:15, 10:30] = 1
        maps.append(np.where(mask > 0, rng.uniform(0.7, 1.0, mask.shape), rng.uniform(0.0, 0.3, mask.shape)))
        masks.append(mask)
    return maps, masks


def test_image_threshold_known_answers():
    # Just above the highest score left unflagged, not midway: a subtler defect at 0.31 is caught too.
    assert score_threshold([0.1, 0.2, 0.3], [0.7, 0.8]) == (just_above(0.3), 1.0, "max_f1")
    assert 0.3 < just_above(0.3) < 0.3 + 1e-7
    # Flagging >= 0.5 catches all 3 anomalies with one false alarm (F1 6/7), better than >= 0.7 (F1 0.8).
    threshold, f1, _ = score_threshold([0.1, 0.2, 0.3, 0.6], [0.5, 0.7, 0.8])
    assert threshold == just_above(0.3) and f1 == pytest.approx(6 / 7)
    # Tied normal and anomalous score: the tie is flagged as a whole.
    threshold, f1, _ = score_threshold([0.0, 1.0], [1.0, 2.0])
    assert threshold == just_above(0.0) and f1 == pytest.approx(0.8)
    # Everything flagged: the lowest score itself.
    assert score_threshold([0.5], [0.2, 0.3, 0.4, 0.6])[0] == 0.2
    # A gap narrower than a float32 step: the lowest flagged score itself, never above it.
    assert score_threshold([0.3], [0.3 + 1e-12]) == (0.3 + 1e-12, 1.0, "max_f1")
    normal = np.arange(1000.0)
    assert score_threshold(normal) == (pytest.approx(np.quantile(normal, 0.99)), None, "normal_quantile")


def test_image_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        normal, anomalous = rng.normal(0, 1, 40).round(1), rng.normal(1.2, 1, 15).round(1)   # rounding makes ties
        threshold, f1, _ = score_threshold(normal, anomalous)
        assert f1 == pytest.approx(brute_force_best_f1(normal, anomalous))
        labels = np.r_[np.zeros(40), np.ones(15)]
        assert f1_score(labels, np.r_[normal, anomalous] >= threshold) == pytest.approx(f1)


def test_pixel_threshold_separates_known_classes():
    maps, masks = separable_maps()
    threshold, f1, method = pixel_threshold(maps, masks)
    scores, labels = np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
    normal_max, defect_min = scores[labels == 0].max(), scores[labels == 1].min()
    bin_width = (scores.max() - scores.min()) / PIXEL_BINS
    assert method == "max_f1" and f1 == 1.0
    assert normal_max < threshold <= defect_min and threshold == pytest.approx(normal_max, abs=2 * bin_width)


def test_pixel_threshold_is_near_the_exact_best_f1():
    rng = np.random.default_rng(5)
    masks = [(rng.uniform(size=(24, 24)) < 0.2).astype(np.uint8) for _ in range(4)]
    maps = [rng.normal(0, 1, m.shape).astype(np.float32) + 1.5 * m for m in masks]
    threshold, f1, _ = pixel_threshold(maps, masks)
    scores, labels = np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
    _, exact_f1, _ = score_threshold(scores[labels == 0], scores[labels == 1])
    assert f1 == pytest.approx(exact_f1, abs=1e-3)
    assert f1_score(labels, scores >= threshold) == pytest.approx(exact_f1, abs=1e-3)


def test_pixel_threshold_without_defects_is_a_normal_quantile():
    rng = np.random.default_rng(6)
    maps = [rng.uniform(0, 10, (30, 30)) for _ in range(2)]
    masks = [np.zeros((30, 30), np.uint8)] * 2
    threshold, f1, method = pixel_threshold(maps, masks, normal_quantile=0.9)
    exact = np.quantile(np.concatenate([m.ravel() for m in maps]), 0.9)
    assert method == "normal_quantile" and f1 is None
    assert exact <= threshold <= exact + 2 * 10 / PIXEL_BINS


def test_choose_thresholds_and_json_round_trip():
    maps, masks = separable_maps()
    chosen = choose_thresholds([0.1, 0.2, 0.3], [0.7, 0.8], maps, masks)
    assert chosen.image == just_above(0.3) and chosen.image_method == "max_f1" and chosen.pixel_f1 == 1.0
    restored = Thresholds.from_dict(json.loads(json.dumps(chosen.to_dict())))
    assert restored == chosen
    only_normal = choose_thresholds([0.1, 0.2, 0.3])
    assert only_normal.pixel is None and only_normal.image_method == "normal_quantile"
    assert only_normal.image == pytest.approx(np.quantile([0.1, 0.2, 0.3], 0.99))


def test_constant_maps_do_not_divide_by_zero():
    maps, masks = [np.full((8, 8), 2.0)] * 2, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)]
    threshold, f1, _ = pixel_threshold(maps, masks)
    assert threshold == 2.0 and f1 == pytest.approx(2 / 3)   # everything flagged: precision 1/2, recall 1


def test_bad_threshold_inputs_are_input_errors():
    with pytest.raises(InputError, match="no normal"):
        choose_thresholds([], [1.0])
    with pytest.raises(InputError):
        choose_thresholds([np.nan, 1.0])
    with pytest.raises(InputError, match="differ"):
        choose_thresholds([0.1], [], [np.zeros((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(InputError, match="without their masks"):
        choose_thresholds([0.1], [], [np.zeros((4, 4))])
    with pytest.raises(InputError, match="no normal pixels"):
        pixel_threshold([np.zeros((4, 4))], [np.ones((4, 4))])
    with pytest.raises(InputError):
        Thresholds.from_dict({"image": 0.5})


@pytest.mark.parametrize("policy, expected", [("f1", ("f1", None)), ("fpr:0.05", ("fpr", 0.05)),
                                              ("manual:12.5", ("manual", 12.5)), (" fpr:0.5 ", ("fpr", 0.5))])
def test_threshold_policies_parse(policy, expected):
    assert parse_threshold_policy(policy) == expected


@pytest.mark.parametrize("policy", ["f2", "fpr:0", "fpr:1", "fpr:x", "manual:nan", "manual:", "f1:3"])
def test_bad_threshold_policies_are_input_errors(policy):
    with pytest.raises(InputError, match="postprocess.threshold"):
        parse_threshold_policy(policy)


def test_each_policy_sets_the_image_threshold_as_documented():
    normal = np.linspace(0.0, 1.0, 101)
    anomalous = np.array([2.0, 3.0])
    f1 = choose_thresholds(normal, anomalous)
    assert 1.0 < f1.image <= 2.0 and f1.image_method == "max_f1"      # between the classes
    fpr = choose_thresholds(normal, anomalous, policy="fpr:0.1")
    assert fpr.image == pytest.approx(np.quantile(normal, 0.9)) and fpr.image_method == "fpr:0.1"
    manual = choose_thresholds(normal, anomalous, policy="manual:0.25")
    assert manual.image == 0.25 and manual.image_method == "manual:0.25"


def test_each_review_policy_sets_a_lower_threshold_as_documented():
    normal = np.linspace(0.0, 1.0, 101)
    anomalous = np.array([0.5, 0.8, 1.5, 2.0, 3.0])
    off = choose_thresholds(normal, anomalous)
    assert off.review is None and off.review_method is None
    recall = choose_thresholds(normal, anomalous, policy=ThresholdPolicy("f1", "recall:0.8"))
    # 4 of the 5 anomalous scores are at or above 0.8: the highest threshold that keeps 80% of them
    assert recall.review == 0.8 and recall.review_method == "recall:0.8" and recall.review < recall.image
    assert choose_thresholds(normal, anomalous, policy=ThresholdPolicy("f1", "recall:1")).review == 0.5
    fpr = choose_thresholds(normal, anomalous, policy=ThresholdPolicy("f1", "fpr:0.2"))
    assert fpr.review == pytest.approx(np.quantile(normal, 0.8))
    # never above the NG threshold: an empty band
    high = choose_thresholds(normal, anomalous, policy=ThresholdPolicy("manual:0.3", "recall:0.2"))
    assert high.review == high.image == 0.3
    assert Thresholds.from_dict(recall.to_dict()) == recall


@pytest.mark.parametrize("review", ["on", "recall:0", "recall:1.5", "fpr:1", "manual:inf", "f1"])
def test_bad_review_policies_are_input_errors(review):
    with pytest.raises(InputError, match="postprocess.review"):
        ThresholdPolicy("f1", review)


def test_a_recall_review_needs_anomalous_validation_images():
    with pytest.raises(InputError, match="postprocess.review: recall:0.9 needs anomalous"):
        choose_thresholds([0.1, 0.2], [], policy=ThresholdPolicy("f1", "recall:0.9"))


def test_the_policy_comes_from_the_postprocess_section():
    assert ThresholdPolicy.from_postprocess({}) == ThresholdPolicy("f1", "off")
    assert ThresholdPolicy.from_postprocess({"review": False}) == ThresholdPolicy("f1", "off")   # YAML's bare off
    assert ThresholdPolicy.from_postprocess({"threshold": "fpr:0.1", "review": "recall:0.95"}) == \
        ThresholdPolicy("fpr:0.1", "recall:0.95")
