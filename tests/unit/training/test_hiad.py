"""src/training/hiad.py: HiAD's HRTrainer interface, checked at the boundary."""
import pytest

import src  # noqa: F401
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.tiling.tasks import A2OTaskGenerator
from src.training.hiad import HRTrainer
from src.utils.errors import InputError


@pytest.mark.parametrize("weights, message", [([1.0], "2 resolutions"), ([1.0, -1.0], "non-negative"),
                                              ([0.0, 0.0], "positive sum"), (None, "need one fusion weight")])
def test_fusion_weights_are_validated(weights, message):
    plan = MultiResolutionHRImageSpliter(256, 64, ds_factors=[0, 1])
    tasks = A2OTaskGenerator().create_tasks([], plan)
    with pytest.raises(InputError, match=message):
        HRTrainer(tasks=tasks, fusion_weights=weights)
    with pytest.raises(InputError, match="1 resolutions"):
        HRTrainer(tasks=A2OTaskGenerator().create_tasks([], MultiResolutionHRImageSpliter(256, 64)),
                  fusion_weights=[0.5, 0.5])
