"""train.py: one model per category, from its normal training images (MVTec layout).

Every model is a tile plan with tasks: the 224-pixel model (no ``hr`` section) is one tile of the
resize-256 -> centre-crop-224 view with one task and the reference's image score (the maximum patch score);
a config with ``hr`` cuts the image (resized to ``hr.image_size``) into tiles, HiAD-style. Writes
<output_dir>/<category>/: model.json, tasks.json, task_<k>/ (faiss.index + bank.json), thumbnail/,
train_result.json and logs/ (train.log and one log per task); see src/training/trainer.py.
"""
import os
import sys
import time

from src.app import cli
from src.data.mvtec import list_train_samples
from src.data.sample import ResizeCrop, Sample
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.tiling.tasks import (A2OTaskGenerator, PrintTasks, RetrieveTaskGenerator, SpatialClusteringTaskGenerator,
                              ThresholdClusteringTaskGenerator, build_task_generator,
                              task_generator_class)
from src.training.trainer import HRTrainer
from src.utils.errors import InputError
from src.utils.io import write_json

CLUSTERING = (SpatialClusteringTaskGenerator, ThresholdClusteringTaskGenerator, RetrieveTaskGenerator)


def task_generator(hr, seed):
    """The configured generator and its JSON spec; clustering generators also get the fusion weights and seed."""
    params = dict(hr.task_generator_params)
    if task_generator_class(hr.task_generator) in CLUSTERING:
        params = {"fusion_weights": None if hr.fusion_weights is None else list(hr.fusion_weights), "seed": seed,
                  **params}
    generator = build_task_generator(hr.task_generator, **params)
    return generator, {"name": type(generator).__name__, "params": params}


def plan_of(config, listed, seed):
    """(samples seen through the model's view, tile plan, task generator, its spec, trainer settings)."""
    hr = config.hr
    if hr is None:  # the 224-pixel model: one tile of the reference's view, one task, the maximum patch score
        view = ResizeCrop(config.data.resize, config.data.imagesize)
        samples = [sample.with_view(view) for sample in listed]
        size = view.output_size(None)
        return (samples, MultiResolutionHRImageSpliter(size, size), A2OTaskGenerator(),
                {"name": "A2OTaskGenerator", "params": {}},
                {"image_score": "grid_max", "thumbnail": None, "fusion_weights": None, "image_score_window": None,
                 "workers": None, "val_config": None})
    image_size = hr.image_size or Sample(listed[0].image).original_size()
    samples = [Sample(s.image, image_size=image_size, defect_type=s.defect_type) for s in listed]
    plan = MultiResolutionHRImageSpliter(image_size, hr.patch_size, hr.stride, hr.ds_factors)
    generator, spec = task_generator(hr, seed)
    return (samples, plan, generator, spec,
            {"image_score": "window_max", "thumbnail": config.raw["hr"]["thumbnail"],
             "fusion_weights": None if hr.fusion_weights is None else list(hr.fusion_weights),
             "image_score_window": hr.image_score_window, "workers": hr.workers, "val_config": hr.val_config})


def train(args, config):
    """Train ``args.category``; returns 0."""
    listed = list_train_samples(args.dataset_path, args.category)
    if args.pre_ckpt_path and not os.path.isfile(args.pre_ckpt_path):
        raise InputError(args.pre_ckpt_path, "backbone checkpoint not found")
    started = time.perf_counter()
    samples, plan, generator, spec, settings = plan_of(config, listed, args.seed)
    tasks = generator.create_tasks(samples, plan)
    if config.hr is not None:
        PrintTasks(tasks)
    folder = os.path.join(args.output_dir, args.category)
    if not args.pre_ckpt_path:
        print(cli.PRETRAINED_HINT, file=sys.stderr)
    cli.setup_logging()
    trainer = HRTrainer(batch_size=config.data.batch_size, tasks=tasks, config=config, thumbnail=settings["thumbnail"],
        fusion_weights=settings["fusion_weights"], checkpoint_root=folder,
        log_root=os.path.join(folder, "logs"), vis_root=None, indexes=plan, pre_ckpt_path=args.pre_ckpt_path,
        seed=args.seed, task_generator=generator, task_generator_spec=spec,
        image_score=settings["image_score"], image_score_window=settings["image_score_window"],
        device_target=args.device_target, device_id=args.device_id, category=args.category)
    meta = trainer.train(samples, workers=args.workers or settings["workers"], val_config=settings["val_config"])
    write_json(os.path.join(folder, "train_result.json"),
               {"category": args.category, "total_seconds": round(time.perf_counter() - started, 3),
                "jobs": meta["jobs"]})
    return 0
