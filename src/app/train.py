"""train.py: one model per category, from its normal training images (MVTec layout).

Every model is a tile plan with tasks (``src/training/model_plan.py``): the 224-pixel model is the one-tile case.
Writes
<output_dir>/<category>/: model.json, tasks.json, task_<k>/ (faiss.index + bank.json), thumbnail/,
train_result.json and logs/ (train.log and one log per task); see src/training/trainer.py.
"""
import os
import sys
import time

from src.app import cli
from src.data.folders import folder_test_samples
from src.tiling.tasks import PrintTasks
from src.training.model_plan import plan_model
from src.training.backends import build_runner
from src.training.trainer import Trainer
from src.utils.errors import InputError
from src.utils.io import write_json

def make_runner(args, config, model_plan):
    """The runner of ``--backend`` (else ``runner.backend``) with its options (the config's ``runner`` entries,
    ``--ray_address`` over ``runner.address``)."""
    backend = args.backend or config.runner.backend
    options = dict(config.runner.options)
    if args.ray_address:
        options["address"] = args.ray_address
    if backend == "local":
        if options:
            raise InputError("--ray_address" if args.ray_address else f"runner.{sorted(options)[0]}",
                             "only with --backend ray")
        return build_runner("local", workers=args.workers or model_plan.workers)
    if args.workers:
        raise InputError("--workers", f"only with --backend local (the {backend} backend places the jobs itself)")
    return build_runner(backend, **options)


def train(args, config):
    """Train ``args.category``; returns 0."""
    listed = cli.training_samples(args)
    if args.pre_ckpt_path and not os.path.isfile(args.pre_ckpt_path):
        raise InputError(args.pre_ckpt_path, "backbone checkpoint not found")
    started = time.perf_counter()
    model_plan = plan_model(config, listed, args.seed, args.category)
    if model_plan.tiled:
        PrintTasks(model_plan.tasks)
    folder = os.path.join(args.output_dir, args.category)
    if not args.pre_ckpt_path:
        print(cli.PRETRAINED_HINT, file=sys.stderr)
    cli.setup_logging()
    sizes = sorted({sample.original_size() for sample in listed})
    cli.logger.info("%d training images of %d size(s) (%s); the model sees each through its view %s",
                    len(listed), len(sizes), ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (", ..." if len(sizes) > 4
                                                                                           else ""),
                    model_plan.samples[0].view)
    runner = make_runner(args, config, model_plan)
    trainer = Trainer(config, model_plan, folder, runner, args.pre_ckpt_path, args.seed,
                      (args.device_target, args.device_id))
    view = model_plan.samples[0].view
    val_samples = [] if not args.val_dir else \
        [sample.with_view(view) for sample in folder_test_samples(args.val_dir, args.val_mask_dir)]
    meta = trainer.train(val_samples)
    write_json(os.path.join(folder, "train_result.json"),
               {"category": args.category, "total_seconds": round(time.perf_counter() - started, 3),
                "jobs": meta["jobs"]})
    return 0
