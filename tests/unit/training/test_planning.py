"""src/training/planning.py: the jobs a model plan makes (views of each task, the thumbnail branch, validation)."""
import numpy as np
import pytest

import src  # noqa: F401
from src.config.hr import ThumbnailSettings
from src.data.sample import Sample
from src.tiling.plan import MultiResolutionHRImageSpliter, WholeImage
from src.tiling.tasks import NeighborhoodTaskGenerator, O2OTaskGenerator
from src.training.model_plan import ModelPlan
from src.training.planning import plan_jobs
from src.utils.errors import InputError

PATCH = {"backbone_name": "mobilenet_v2", "percentage": 0.1, "target_embed_dimension": 64}


def model_plan(n_samples=3, thumbnail=None, tiled=True, generator=O2OTaskGenerator()):
    samples = [Sample(np.zeros((64, 64, 3), np.uint8)) for _ in range(n_samples)]
    plan = MultiResolutionHRImageSpliter(64, 32)   # 2 x 2 tiles
    return ModelPlan(samples, plan, generator.create_tasks(samples, plan), generator, None, {"policy": "max"}, tiled,
                     "demo", thumbnail, None)


def say(*args, **kwargs):
    pass


def test_each_task_trains_on_its_tiles_of_the_kept_images_and_validates_on_every_item():
    plan = model_plan()
    jobs = plan_jobs(plan, PATCH, train_positions=[0, 2], items=["a", "b"], say=say)
    assert sorted(jobs) == ["task_0", "task_1", "task_2", "task_3"]
    for task in plan.tasks:
        job = jobs[task.name]
        assert [position for position, _ in job.train_views] == [0, 2]          # image 1 is held out
        assert [index for _, index in job.train_views] == list(task.indexes) * 2
        assert job.val_views == tuple((item, index) for item in (0, 1) for index in task.indexes)
        assert job.patch_config == PATCH and job.input_size == (32, 32)


def test_the_thumbnail_branch_sees_whole_images_with_its_own_patch_entries():
    thumbnail = ThumbnailSettings((16, 16), "max", {"percentage": 0.5})
    jobs = plan_jobs(model_plan(thumbnail=thumbnail), PATCH, train_positions=[0, 1, 2], items=["a"], say=say)
    job = jobs["thumbnail"]
    assert job.train_views == tuple((s, WholeImage((16, 16))) for s in range(3))
    assert job.val_views == ((0, WholeImage((16, 16))),)
    assert job.patch_config == {**PATCH, "percentage": 0.5} and jobs["task_0"].patch_config == PATCH


def test_an_untiled_plan_keeps_raw_scores_no_job_validates():
    jobs = plan_jobs(model_plan(thumbnail=ThumbnailSettings((16, 16))), PATCH, [0, 1, 2], ["a", "b"], say)
    assert all(job.val_views for job in jobs.values())
    untiled = plan_jobs(model_plan(tiled=False), PATCH, [0, 1, 2], ["a", "b"], say)
    assert not any(job.val_views for job in untiled.values())


def test_a_task_left_without_training_tiles_is_an_input_error():
    plan = model_plan(generator=NeighborhoodTaskGenerator(1, 1))
    with pytest.raises(InputError, match="task_0: all its training tiles come from held-out validation images"):
        plan_jobs(plan, PATCH, train_positions=[], items=[], say=say)
