"""Evaluate a trained category: anomaly maps and scores for test images, then the five metrics.

Writes <output_dir>/<category>/eval/: metrics.json, scores.json, metrics.md, eval.log, vis/*.png.
"""
import os
import sys

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src import cli

# Entries that only change scoring or speed may differ from training; the rest define the bank.
EVAL_OVERRIDABLE = {"batch_size", "data.batch_size", "anomaly_scorer_num_nn", "patch.anomaly_scorer_num_nn",
                    "gaussian_sigma", "postprocess.gaussian_sigma"}


def main():
    args = cli.base_parser(__doc__.splitlines()[0]).parse_args()
    import numpy as np

    from src.config import apply_overrides
    from src.dataset import Transform, list_test_samples
    from src.errors import InputError
    from src.io_utils import staged_folder, write_json, write_text
    from src.memory_bank import MemoryBank, check_backbone_checkpoint
    from src.metrics import compute_metrics, format_table
    from src.patchcore import PRETRAINED_HINT, build_extractor, predict
    from src.visualize import comparison_picture, save_picture

    bank_dir = os.path.join(args.output_dir, args.category)
    from src.hr_cli import eval_hr, is_hr_model
    if is_hr_model(bank_dir):  # trained in high-resolution mode (src/hr_inference.py)
        return eval_hr(args)
    bank = MemoryBank.load(bank_dir)
    config = bank.metadata["config"]
    for item in args.override:
        if item.split("=", 1)[0].strip() not in EVAL_OVERRIDABLE:
            raise InputError(f"-o {item}", "only batch_size, anomaly_scorer_num_nn and gaussian_sigma can change "
                                           "after training; retrain to change the rest")
    apply_overrides(config, args.override)
    if args.config:
        print(f"note: --config is ignored by eval.py; the model's config comes from {bank_dir}/bank.json",
              file=sys.stderr)
    check_backbone_checkpoint(bank.metadata, args.pre_ckpt_path, "--pre_ckpt_path")
    expected_ckpt = bank.metadata.get("backbone_checkpoint_sha256")
    if args.seed != bank.metadata["seed"] and expected_ckpt is None:
        raise InputError("--seed", f"the bank was trained with random weights of seed {bank.metadata['seed']}")
    samples = list_test_samples(args.dataset_path, args.category)
    cli.set_device(args.device_target, args.device_id)

    with staged_folder(os.path.join(bank_dir, "eval")) as stage:
        with cli.logging_to(os.path.join(stage, "eval.log")):
            if expected_ckpt is None:
                print(PRETRAINED_HINT, file=sys.stderr)
            cli.logger.info("evaluating %s: %d test images, bank %d x %d", args.category, len(samples),
                            len(bank), bank.dimension)
            extractor, _ = build_extractor(config["patch"], args.pre_ckpt_path, bank.metadata["seed"])
            transform = Transform.from_config(config["data"])
            size = (transform.imagesize, transform.imagesize)
            results = list(predict(extractor, bank, lambda s: transform.image(s.image_path), samples,
                                   int(config["patch"]["anomaly_scorer_num_nn"]), size,
                                   float(config["postprocess"]["gaussian_sigma"]), int(config["data"]["batch_size"])))
            scores = np.array([score for _, score, _ in results], np.float64)
            maps = np.stack([amap for _, _, amap in results])
            masks = np.stack([transform.mask(sample) for sample in samples])
            labels = np.array([sample.label for sample in samples])
            metrics = compute_metrics(scores, labels, maps, masks)

            write_json(os.path.join(stage, "metrics.json"), dict(category=args.category, **metrics))
            write_json(os.path.join(stage, "scores.json"), [
                {"path": os.path.relpath(s.image_path, args.dataset_path), "defect_type": s.defect_type,
                 "label": int(s.label), "image_score": float(score)} for s, score in zip(samples, scores)])
            table = format_table([dict(clsname=args.category, **metrics)],
                                 ["clsname", "image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1", "pro"])
            write_text(os.path.join(stage, "metrics.md"), table + "\n")
            vis = os.path.join(stage, "vis")
            os.makedirs(vis)
            vmin, vmax = float(maps.min()), float(maps.max())
            for sample, amap, mask in zip(samples, maps, masks):
                name = f"{sample.defect_type}_{os.path.splitext(os.path.basename(sample.image_path))[0]}.png"
                save_picture(os.path.join(vis, name),
                             comparison_picture(transform.rgb(sample.image_path), amap, mask, vmin, vmax))
            cli.logger.info("results written to %s", os.path.join(bank_dir, "eval"))
            print(table)
    return 0


if __name__ == "__main__":
    cli.run(main)
