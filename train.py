"""Train PatchCore on one category: normal images -> patch features -> coreset memory bank.

Writes <output_dir>/<category>/: faiss.index, bank.json (config, seed, versions, shapes, sha256),
train_result.json (sizes and timings) and train.log.
"""
import os
import platform
import sys
import time

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src import cli


def main():
    parser = cli.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None,
                        help="high-resolution mode: worker processes (default: as many as fit in memory)")
    args = parser.parse_args()
    from src.config import load_config
    from src.errors import InputError
    from src.io_utils import staged_folder, write_json
    from src.dataset import Transform, list_train_samples
    from src.memory_bank import sha256_of
    from src.patchcore import PRETRAINED_HINT, build_extractor, fit

    config = load_config(args.config, args.override)
    samples = list_train_samples(args.dataset_path, args.category)
    if args.pre_ckpt_path and not os.path.isfile(args.pre_ckpt_path):
        raise InputError(args.pre_ckpt_path, "backbone checkpoint not found")
    if "hr" in config:  # high-resolution mode: tiles, one bank per task (src/hr_trainer.py)
        from src.hr_cli import train_hr
        return train_hr(args, config, samples)
    cli.set_device(args.device_target, args.device_id)
    import faiss
    import mindspore as ms
    import numpy as np

    final_dir = os.path.join(args.output_dir, args.category)
    with staged_folder(final_dir) as stage:
        with cli.logging_to(os.path.join(stage, "train.log")):
            if not args.pre_ckpt_path:
                print(PRETRAINED_HINT, file=sys.stderr)
                cli.logger.warning("backbone weights: seeded random (seed %d), not pretrained", args.seed)
            cli.logger.info("training %s: %d normal images from %s", args.category, len(samples), args.dataset_path)
            t0 = time.perf_counter()
            ms.set_seed(args.seed)
            extractor, pretrained = build_extractor(config["patch"], args.pre_ckpt_path, args.seed)
            transform = Transform.from_config(config["data"])
            bank, stats = fit(extractor, lambda s: transform.image(s.image_path), samples, config["patch"],
                              int(config["data"]["batch_size"]), args.seed)
            bank.metadata = {
                "category": args.category,
                "config": config,
                "seed": args.seed,
                "pretrained": pretrained,
                "backbone_checkpoint_sha256": sha256_of(args.pre_ckpt_path) if args.pre_ckpt_path else None,
                "image_size": [transform.imagesize, transform.imagesize],
                "train_images": [os.path.relpath(s.image_path, args.dataset_path) for s in samples],
                "versions": {"python": platform.python_version(), "mindspore": ms.__version__,
                             "faiss": faiss.__version__, "numpy": np.__version__},
            }
            bank.save(stage)
            write_json(os.path.join(stage, "train_result.json"),
                       dict(stats, bank_size=len(bank), total_seconds=round(time.perf_counter() - t0, 3)))
            cli.logger.info("memory bank: %d x %d written to %s (%.1f s in total)", len(bank), bank.dimension,
                            final_dir, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    cli.run(main)
