"""eval.py: a trained model's maps and scores on a category's test images, the five metrics, pictures.

Writes <output_dir>/<category>/eval/ (through a staging folder): metrics.json, metrics.md, scores.json,
results.json, results.md, eval.log and vis/.
"""
import os
import sys

from src.app import cli
from src.config.loader import apply_overrides
from src.evaluation.evaluate import default_evaluators, evaluation_size, run_inference, with_decisions
from src.inference.model import Model
from src.patchcore.memory_bank import EXACT, search_spec
from src.utils.errors import InputError
from src.utils.io import staged_folder, write_json, write_text

# Entries that only change scoring, evaluation or speed may differ from training; the rest define the banks.
EVAL_SETTINGS = {"batch_size": "data", "anomaly_scorer_num_nn": "patch", "gaussian_sigma": "postprocess",
                 "search": "postprocess", "eval_resize": "hr", "vis_size": "hr"}


def eval_settings(meta, overrides):
    """{entry: value} of the EVAL_SETTINGS entries: the training config's, then ``-o`` overrides."""
    config = meta.get("config") or {}
    hr = config.get("hr") or {}
    settings = {"batch_size": meta["batch_size"],
                "anomaly_scorer_num_nn": config["patch"]["anomaly_scorer_num_nn"],
                "gaussian_sigma": meta["inference"]["gaussian_sigma"],
                "search": meta["inference"].get("search", EXACT),
                "eval_resize": evaluation_size(meta), "vis_size": hr.get("vis_size", 1024)}
    sections = {section: {} for section in set(EVAL_SETTINGS.values())}
    for key, section in EVAL_SETTINGS.items():
        sections[section][key] = settings[key]
    for item in overrides:
        if item.split("=", 1)[0].strip().split(".")[-1] not in EVAL_SETTINGS:
            raise InputError(f"-o {item}", f"only {', '.join(EVAL_SETTINGS)} can change after training; retrain "
                                           "to change the rest")
    apply_overrides(sections, overrides)
    return {key: sections[section][key] for key, section in EVAL_SETTINGS.items()}


def apply_settings(model, settings):
    """The scoring entries of ``settings`` onto a loaded model."""
    model.batch_size = int(settings["batch_size"])
    model.settings = dict(model.settings, gaussian_sigma=float(settings["gaussian_sigma"]))
    for detector in model.detectors.values():
        detector.patch_config["anomaly_scorer_num_nn"] = int(settings["anomaly_scorer_num_nn"])
        detector.bank.use_search(search_spec(settings["search"], "-o search"))
    for featurizer in model.featurizers.values():
        featurizer.batch_size = model.batch_size


def evaluate(args):
    folder = os.path.join(args.output_dir, args.category)
    meta = Model.read_meta(folder)
    if args.config:
        print(f"note: --config is ignored by eval.py; the model's config comes from {folder}/model.json",
              file=sys.stderr)
    if args.seed != meta["seed"] and meta["backbone_checkpoint_sha256"] is None:
        raise InputError("--seed", f"the model was trained with random weights of seed {meta['seed']}")
    settings = eval_settings(meta, args.override)
    listed = cli.test_samples(args)
    root = cli.sample_root(args, listed)
    cli.set_device(args.device_target, args.device_id)
    model = Model.load(folder, args.pre_ckpt_path)
    apply_settings(model, settings)
    names = [f"{s.defect_type}_{os.path.splitext(os.path.basename(s.image_path))[0]}" for s in listed]
    with staged_folder(os.path.join(folder, "eval")) as stage:
        with cli.logging_to(os.path.join(stage, "eval.log")):
            if meta["backbone_checkpoint_sha256"] is None:
                print(cli.PRETRAINED_HINT, file=sys.stderr)
            cli.logger.info("evaluating %s: %d test images, %d tasks, image size %dx%d", args.category, len(listed),
                            len(model.tasks), *model.image_size)
            evaluators = with_decisions(default_evaluators(settings["eval_resize"]), meta.get("thresholds"),
                                        [sample.defect_type for sample in listed], settings["eval_resize"])
            results = run_inference(model, listed, evaluators, clsname=args.category,
                                    names=names, results_root=stage, vis_root=os.path.join(stage, "vis"),
                                    vis_size=settings["vis_size"], log=cli.logger)
            write_json(os.path.join(stage, "metrics.json"), dict(category=args.category, **results["metrics"]))
            write_json(os.path.join(stage, "scores.json"), [
                {"path": os.path.relpath(s.image_path, root), "defect_type": s.defect_type,
                 "label": int(s.label), "image_score": image["image_score"],
                 **{k: v for k, v in image.items() if k in ("predicted_anomalous", "decision")}}
                for s, image in zip(listed, results["images"])])
            write_text(os.path.join(stage, "metrics.md"), results["table"] + "\n")
            cli.logger.info("results written to %s", os.path.join(folder, "eval"))
    return 0
