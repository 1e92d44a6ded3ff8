"""What a config makes of a category's training images: the view, the tile plan, the tasks and the scoring.

Tiling is an option of the one model, not a second pipeline: without an ``hr`` section the model is the
reference's 224-pixel PatchCore, one tile of the ``ResizeCrop`` view (shorter side to ``data.resize``, centre
crop ``data.imagesize``) with one A2O task, no thumbnail and the maximum patch score as the image score; with
``hr`` the image is resized to ``hr.image_size`` (the first training image's size by default), cut into tiles by
``MultiResolutionHRImageSpliter``, the configured task generator maps tiles to tasks, and the image score is the
one-cell moving-average maximum of the map by default. The image-score policy is the config's (any policy with
any plan). ``tiled``: every task's scores are normalised on the validation images (a plan from an ``hr`` section,
or HiAD's interface); the 224-pixel model keeps the reference's raw scores.
"""
from dataclasses import dataclass

from src.config.hr import ThumbnailSettings, ValidationSettings
from src.data.augment import check_image_shape
from src.data.sample import Resize, ResizeCrop, Sample
from src.patchcore.detector import PatchCoreDetector
from src.tiling.plan import MultiResolutionHRImageSpliter, plan_image_size
from src.tiling.tasks import (TASK_GENERATORS, A2OTaskGenerator, RetrieveTaskGenerator, SpatialClusteringTaskGenerator,
                              ThresholdClusteringTaskGenerator, build_task_generator)

CLUSTERING = (SpatialClusteringTaskGenerator, ThresholdClusteringTaskGenerator, RetrieveTaskGenerator)


@dataclass(frozen=True)
class ModelPlan:
    """``samples``: the training samples seen through the model's view; ``tasks`` cover ``plan``'s tiles (a
    ``MultiResolutionHRImageSpliter`` or the list of its tiles); ``task_generator`` routes the tiles of Retrieve
    tasks; ``image_score``: the config's section; ``category``: the model's name (model.json)."""
    samples: list
    plan: object
    tasks: list
    task_generator: object
    task_generator_spec: dict
    image_score: dict
    tiled: bool
    category: str
    thumbnail: ThumbnailSettings = None
    fusion_weights: list = None
    val_config: ValidationSettings = None
    workers: int = None
    detector_class: type = PatchCoreDetector

    @property
    def image_size(self):
        """(w, h) the model sees an image at."""
        return tuple(plan_image_size(self.plan))

    @property
    def view(self):
        """How an input image becomes what the model sees."""
        return self.samples[0].view or Resize(self.image_size)


def task_generator(hr, seed):
    """The configured generator and its JSON spec; clustering generators also get the fusion weights and seed."""
    params = dict(hr.task_generator_params)
    if TASK_GENERATORS.lookup(hr.task_generator) in CLUSTERING:
        params = {"fusion_weights": None if hr.fusion_weights is None else list(hr.fusion_weights), "seed": seed,
                  **params}
    generator = build_task_generator(hr.task_generator, **params)
    return generator, {"name": type(generator).__name__, "params": params}


def plan_model(config, samples, seed, category, tasks=None):
    """The ModelPlan of ``config`` (a ``Config``) for ``samples`` (a category's training images); ``tasks``: a
    trained model's (its tasks.json), instead of creating them (a clustering generator would run the network)."""
    hr = config.hr
    if hr is None:
        view = ResizeCrop(config.data.resize, config.data.imagesize)
        viewed = [sample.with_view(view) for sample in samples]
        size = view.output_size(None)
        plan = MultiResolutionHRImageSpliter(size, size)
        generator = A2OTaskGenerator()
        return ModelPlan(viewed, plan, tasks or generator.create_tasks(viewed, plan), generator,
                         {"name": "A2OTaskGenerator", "params": {}}, config.image_score, False, category,
                         val_config=config.val_config)
    image_size = hr.image_size or Sample(samples[0].image).original_size()
    check_image_shape(config.data.train_augment, image_size)
    viewed = [Sample(s.image, image_size=image_size, defect_type=s.defect_type) for s in samples]
    plan = MultiResolutionHRImageSpliter(image_size, hr.patch_size, hr.stride, hr.ds_factors)
    generator, spec = task_generator(hr, seed)
    return ModelPlan(viewed, plan, tasks or generator.create_tasks(viewed, plan), generator, spec, config.image_score, True,
                     category, hr.thumbnail, None if hr.fusion_weights is None else list(hr.fusion_weights),
                     config.val_config, hr.workers)
