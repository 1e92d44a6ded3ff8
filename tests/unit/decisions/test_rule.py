"""src/decisions: the one place where a score meets its threshold (labels, the pixel decision, regions)."""
import numpy as np
import pytest

from src.data.sample import Resize
from src.decisions.thresholds import DecisionRule, decide, flagged, label, score_peak
from src.patchcore.normalization import ScoreNormalizer
from src.utils.errors import InputError


def rule(image=1.0, pixel=0.8):
    normalizer = ScoreNormalizer.at_threshold(np.linspace(0.0, 0.5, 11), image).to_dict()
    return DecisionRule({"image": image, "pixel": pixel}, normalizer)


def test_a_score_at_its_threshold_is_anomalous():
    assert label(1.0, 1.0) == "NG" and label(np.nextafter(1.0, 0), 1.0) == "OK"
    assert flagged(np.array([0.5, 1.0, 2.0]), 1.0).tolist() == [False, True, True]


def test_a_model_without_thresholds_cannot_decide():
    with pytest.raises(InputError, match="model.json: the model has no thresholds"):
        DecisionRule(None, None)


def test_pixels_over_the_pixel_threshold_are_the_regions_in_the_original_images_pixels():
    amap = np.zeros((10, 20))
    amap[2:4, 5:9] = 0.9      # one region of 2 x 4 view pixels
    amap[7, 15] = 0.85        # a second, lower one
    decision = rule()(1.2, amap, Resize((20, 10)), original_size=(40, 20))
    assert decision.label == "NG" and decision.raw_score == 1.2 and decision.image_score > 0.5
    assert [region["bbox"] for region in decision.regions] == [[10, 4, 8, 4], [30, 14, 2, 2]]
    assert [region["area"] for region in decision.regions] == [32, 4]
    assert {region["source"] for region in decision.regions} == {"pixel_threshold"}
    assert decision.mask.sum() == 9 and decision.normalised_map.shape == amap.shape


def test_an_ng_image_without_a_pixel_over_the_threshold_is_shown_where_its_score_came_from():
    amap = np.full((10, 10), 0.1)
    amap[4:6, 4:6] = 0.5
    amap[5, 5] = 0.6          # below the pixel threshold 0.8
    decision = rule()(1.0, amap)
    assert decision.label == "NG" and decision.image_score == pytest.approx(0.5)
    assert [(region["bbox"], region["source"]) for region in decision.regions] == [([4, 4, 2, 2], "score_peak")]
    assert (decision.mask == score_peak(amap)).all()


def test_an_ok_image_has_no_region_below_the_pixel_threshold():
    decision = rule()(0.2, np.full((6, 6), 0.3))
    assert decision.label == "OK" and decision.regions == [] and not decision.mask.any()
    assert decision.image_score < 0.5


def test_scores_between_the_review_and_the_image_threshold_are_sent_to_review():
    assert [label(s, 1.0, 0.6) for s in (0.59, 0.6, 0.99, 1.0)] == ["OK", "REVIEW", "REVIEW", "NG"]
    assert decide([0.59, 0.6, 1.0], 1.0).tolist() == ["OK", "OK", "NG"]   # no band: OK or NG
    assert decide([0.59, 0.6, 1.0], 1.0, 0.6).tolist() == ["OK", "REVIEW", "NG"]


def test_a_review_image_is_shown_where_its_score_came_from():
    normalizer = ScoreNormalizer.at_threshold(np.linspace(0.0, 0.5, 11), 1.0).to_dict()
    banded = DecisionRule({"image": 1.0, "pixel": 0.8, "review": 0.7}, normalizer)
    amap = np.full((10, 10), 0.1)
    amap[2, 3] = 0.6
    decision = banded(0.8, amap)
    assert decision.label == "REVIEW" and decision.image_score < 0.5
    assert [(region["bbox"], region["source"]) for region in decision.regions] == [([3, 2, 1, 1], "score_peak")]
    assert banded(0.69, amap).regions == []
    assert banded.count(["OK", "REVIEW", "NG", "REVIEW"]) == "1 OK, 2 REVIEW, 1 NG"
    assert banded.describe() == "image threshold 1, review threshold 0.7"
    assert banded.review_image_score == pytest.approx(float(banded.normalizer.transform(0.7)))
    assert banded.review_image_score < 0.5 and rule().review_image_score is None
    assert rule().count(["OK", "NG"]) == "1 OK, 1 NG" and rule().describe() == "image threshold 1"
