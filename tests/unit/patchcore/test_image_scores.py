"""Image-score policies: the registry, the config section, the paper's reweighting (eq. 7) against a direct
transcription, and the tiled flag, which comes from the plan whatever the policy."""
import numpy as np
import pytest

import src  # noqa: F401
from src.config.loader import load_config
from src.data.sample import Sample
from src.patchcore.memory_bank import MemoryBank
from src.patchcore.scoring import IMAGE_SCORE_POLICIES, ImageScorer, build_image_score
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.training.model_plan import plan_model
from src.utils.errors import InputError


def eq7_transcription(bank, features, num_nn):
    """Roth et al. 2022, eq. 7, written out: s* the largest nearest-neighbour distance (squared, as our patch
    scores), m_test its patch, m* its nearest bank entry, N_b(m*) the num_nn entries nearest to m* (m* first)."""
    distances = np.sqrt(((features[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    patch_scores = distances.min(axis=1) ** 2
    test = int(np.argmax(patch_scores))
    nearest = int(np.argmin(distances[test]))
    around = np.argsort(np.sqrt(((bank.astype(np.float64) - bank[nearest]) ** 2).sum(-1)), kind="stable")[:num_nn]
    return (1 - np.exp(distances[test, nearest]) / np.exp(distances[test, around]).sum()) * patch_scores[test]


@pytest.mark.parametrize("num_nn", [1, 3, 9])
def test_reweighted_equals_a_direct_transcription_of_eq_7(num_nn):
    rng = np.random.default_rng(num_nn)
    bank_rows = rng.normal(0, 0.3, (60, 8)).astype(np.float32)
    features = rng.normal(0, 0.3, (1, 8, 4, 5)).astype(np.float32)    # one tile's [B, D, h, w]
    bank = MemoryBank.from_features(bank_rows)
    rows = features[0].reshape(8, -1).T
    grid = bank.patch_scores(rows).reshape(4, 5)
    y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
    weight = bank.support_weight(features[0, :, y, x], num_nn)
    (tile,) = MultiResolutionHRImageSpliter((5, 4), (5, 4))
    policy = build_image_score({"policy": "reweighted", "num_nn": num_nn})
    score, _ = ImageScorer((5, 4), policy, gaussian_sigma=0)([(tile, grid)], None, [weight])
    assert score == pytest.approx(eq7_transcription(bank_rows, rows, num_nn), rel=1e-6)
    if num_nn == 1:
        assert score == 0.0     # m* alone: softmax 1, weight 0


def test_reweighted_takes_the_weight_of_the_grid_holding_the_largest_score():
    policy = build_image_score("reweighted")
    grids = [np.array([[0.2, 0.1]]), np.array([[0.9, 0.3]]), np.array([[0.5]])]
    assert policy(None, grids, [0.1, 0.5, 0.9]) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="weight"):
        policy(None, grids)


def test_max_and_topk_mean_read_every_grid():
    grids = [np.array([[0.1, 0.7], [0.3, 0.2]]), np.array([[0.6, 0.9]])]
    assert build_image_score("max")(None, grids) == pytest.approx(0.9)
    assert build_image_score({"policy": "topk_mean", "k": 3})(None, grids) == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert build_image_score({"policy": "topk_mean", "k": 100})(None, grids) == pytest.approx(np.mean([0.1, 0.7, 0.3,
                                                                                                       0.2, 0.6, 0.9]))


def test_policies_record_only_their_own_parameters_and_read_their_old_names():
    section = {"policy": None, "window": None, "k": 4, "num_nn": 5}
    recorded = {name: build_image_score(dict(section, policy=name), feature_stride=8).to_dict()
                for name in IMAGE_SCORE_POLICIES}
    assert recorded == {"max": {"policy": "max"}, "window_max": {"policy": "window_max", "window": 8},
                        "topk_mean": {"policy": "topk_mean", "k": 4}, "reweighted": {"policy": "reweighted",
                                                                                     "num_nn": 5}}
    for spec in recorded.values():    # model.json round trip
        assert build_image_score(spec).to_dict() == spec
    assert build_image_score({"policy": "grid_max", "window": None}).to_dict() == {"policy": "max"}


@pytest.mark.parametrize("overrides, message", [(["image_score.policy=median"], "unknown policy 'median'"),
                                                (["image_score.policy=topk_mean", "image_score.k=0"], "image_score.k"),
                                                (["image_score.policy=reweighted", "num_nn=x"], "image_score.num_nn")])
def test_a_bad_policy_or_parameter_stops_at_the_config(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(None, overrides)


def test_the_policy_defaults_by_tiling_and_tiled_comes_from_the_plan_not_the_policy(tmp_path):
    import cv2
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((64, 64, 3), np.uint8))
    samples = [Sample(str(path))]
    plain = load_config(None)
    assert plain.image_score["policy"] == "max"
    hr_overrides = ["hr.enabled=true", "hr.patch_size=32", "hr.thumbnail=null"]
    assert load_config(None, hr_overrides).image_score["policy"] == "window_max"
    for policy in IMAGE_SCORE_POLICIES:
        plan = plan_model(load_config(None, ["image_score.policy=" + policy]), samples, 0, "leather")
        tiled = plan_model(load_config(None, hr_overrides + ["image_score.policy=" + policy]), samples, 0, "leather")
        assert (plan.tiled, tiled.tiled) == (False, True)
        assert plan.image_score["policy"] == tiled.image_score["policy"] == policy


def test_reference_bn_update_is_stored_as_the_side_of_the_ones_image():
    assert load_config(None).patch.reference_bn_update is None
    config = load_config(None, ["reference_bn_update=true", "imagesize=192", "resize=200"])
    assert config.patch.reference_bn_update == 192 and config.raw["patch"]["reference_bn_update"] == 192
    assert config.patch.to_dict()["reference_bn_update"] == 192       # what the extractor and bank.json get
    with pytest.raises(InputError, match="reference_bn_update must be true or false"):
        load_config(None, ["reference_bn_update=maybe"])
