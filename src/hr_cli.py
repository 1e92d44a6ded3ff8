"""train.py / eval.py in high-resolution mode (a config with ``hr: {enabled: true}``) on an MVTec-layout category.

train: <output_dir>/<category>/ gets tasks.json, task_<k>/, thumbnail/, hr_model.json and logs/ (train.log and
one log per task); see src/hr_trainer.py. eval: <output_dir>/<category>/eval/ gets metrics.json, metrics.md,
scores.json, results.json, results.md, eval.log and vis/ (written through a staging folder).
"""
import os
import sys

from src import cli
from src.config import apply_overrides
from src.dataset import list_test_samples
from src.errors import InputError
from src.hr_inference import MODEL_FILE, TASKS_FILE, HRModel, default_evaluators, run_inference
from src.hr_trainer import HRTrainer
from src.io_utils import staged_folder, write_json, write_text
from src.patchcore import PRETRAINED_HINT
from src.samples import HRSample
from src.tasks import (PrintTasks, RetrieveTaskGenerator, SpatialClusteringTaskGenerator,
                       ThresholdClusteringTaskGenerator, build_task_generator)
from src.tiling import MultiResolutionHRImageSpliter, as_width_height

EVAL_OVERRIDABLE = {"eval_resize", "hr.eval_resize", "vis_size", "hr.vis_size"}


def is_hr_model(folder):
    """True when ``folder`` holds a (possibly unfinished) high-resolution model."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in (MODEL_FILE, TASKS_FILE))


def _task_generator(hr, seed):
    """The configured generator and its JSON spec; clustering generators also get the fusion weights and seed."""
    params = dict(hr["task_generator_params"] or {})
    generator = build_task_generator(hr["task_generator"], **params)
    if isinstance(generator, (SpatialClusteringTaskGenerator, ThresholdClusteringTaskGenerator, RetrieveTaskGenerator)):
        params = {"fusion_weights": hr["fusion_weights"], "seed": seed, **params}
        generator = build_task_generator(hr["task_generator"], **params)
    return generator, {"name": type(generator).__name__, "params": params}


def train_hr(args, config, listed):
    """train.py in high-resolution mode; ``listed``: the category's training samples (checked by train.py)."""
    hr = config["hr"]
    image_size = (as_width_height(hr["image_size"], "hr.image_size") if hr["image_size"] is not None
                  else HRSample(listed[0].image_path).original_size())
    samples = [HRSample(s.image_path, image_size=image_size) for s in listed]
    plan = MultiResolutionHRImageSpliter(image_size, hr["patch_size"], hr["stride"], hr["ds_factors"])
    generator, spec = _task_generator(hr, args.seed)
    tasks = generator.create_tasks(samples, plan)
    PrintTasks(tasks)
    folder = os.path.join(args.output_dir, args.category)
    if not args.pre_ckpt_path:
        print(PRETRAINED_HINT, file=sys.stderr)
    cli.setup_logging()
    trainer = HRTrainer(batch_size=int(config["data"]["batch_size"]), tasks=tasks, config={
        "patch": config["patch"], "data": config["data"], "postprocess": config["postprocess"],
        "thumbnail": hr["thumbnail"]}, fusion_weights=hr["fusion_weights"], checkpoint_root=folder,
        log_root=os.path.join(folder, "logs"), vis_root=None, indexes=plan, pre_ckpt_path=args.pre_ckpt_path,
        seed=args.seed, task_generator=generator, task_generator_spec=spec,
        image_score_window=hr["image_score_window"], full_config=config, device_target=args.device_target,
        device_id=args.device_id, category=args.category)
    trainer.train(samples, workers=args.workers or hr["workers"], val_config=hr["val_config"])
    return 0


def eval_settings(meta, overrides):
    """eval_resize and vis_size: from the training config, or ``-o`` overrides."""
    for item in overrides:
        if item.split("=", 1)[0].strip() not in EVAL_OVERRIDABLE:
            raise InputError(f"-o {item}", "in high-resolution mode only eval_resize and vis_size can change "
                                           "after training")
    hr = (meta.get("config") or {}).get("hr") or {}
    settings = {"hr": {"eval_resize": hr.get("eval_resize", 512), "vis_size": hr.get("vis_size", 1024)}}
    apply_overrides(settings, overrides)
    return settings["hr"]


def eval_hr(args):
    folder = os.path.join(args.output_dir, args.category)
    if args.config:
        print(f"note: --config is ignored by eval.py; the model's config comes from {folder}/{MODEL_FILE}",
              file=sys.stderr)
    cli.set_device(args.device_target, args.device_id)
    model = HRModel.load(folder, args.pre_ckpt_path)
    meta = model.meta
    if args.seed != meta["seed"] and meta["backbone_checkpoint_sha256"] is None:
        raise InputError("--seed", f"the model was trained with random weights of seed {meta['seed']}")
    settings = eval_settings(meta, args.override)
    listed = list_test_samples(args.dataset_path, args.category)
    samples = [HRSample(s.image_path, s.mask_path, image_size=model.image_size, label=s.label) for s in listed]
    names = [f"{s.defect_type}_{os.path.splitext(os.path.basename(s.image_path))[0]}" for s in listed]
    with staged_folder(os.path.join(folder, "eval")) as stage:
        with cli.logging_to(os.path.join(stage, "eval.log")):
            if meta["backbone_checkpoint_sha256"] is None:
                print(PRETRAINED_HINT, file=sys.stderr)
            cli.logger.info("evaluating %s: %d test images, %d tasks, image size %dx%d", args.category, len(samples),
                            len(model.tasks), *model.image_size)
            results = run_inference(model, samples, default_evaluators(settings["eval_resize"]), clsname=args.category,
                                    names=names, results_root=stage, vis_root=os.path.join(stage, "vis"),
                                    vis_size=settings["vis_size"], log=cli.logger)
            write_json(os.path.join(stage, "metrics.json"), dict(category=args.category, **results["metrics"]))
            write_json(os.path.join(stage, "scores.json"), [
                {"path": os.path.relpath(s.image_path, args.dataset_path), "defect_type": s.defect_type,
                 "label": int(s.label), "image_score": image["image_score"],
                 **{k: v for k, v in image.items() if k == "predicted_anomalous"}}
                for s, image in zip(listed, results["images"])])
            write_text(os.path.join(stage, "metrics.md"), results["table"] + "\n")
            cli.logger.info("results written to %s", os.path.join(folder, "eval"))
    return 0
