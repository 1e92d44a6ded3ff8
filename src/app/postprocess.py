"""postprocess.py: the C++ runner's outputs -> image scores, maps, OK/REVIEW/NG decisions and metrics, as eval.py and
predict.py compute them (see src/deploy/outputs.py).

Writes into ``--output_dir`` acc_<CATEGORY>.log (the model zoo's summary line, the metrics table, the timings),
acc_<CATEGORY>.json (metrics, score source, latency, every image's score and decision) and ng_<CATEGORY>/, a
picture of every NG or REVIEW image.
"""
import os
import time

from src.decisions.thresholds import OK, DecisionRule
from src.deploy.export import EXPORT_FILE
from src.deploy.outputs import evaluate
from src.deploy.package import load_export, load_manifest, read_latency, scoring_jobs
from src.evaluation.metrics import format_table
from src.evaluation.report import columns_of
from src.utils.errors import InputError
from src.utils.io import write_json, write_text


def acc_line(metrics):
    """The model zoo's summary line, followed by the other metrics."""
    def text(value):
        return "n/a" if value is None else f"{value:g}"
    names = [("img_auc", "image_auroc"), ("pixel_auc", "pixel_auroc"), ("pixel_ap", "pixel_ap"),
             ("pixel_f1", "pixel_f1"), ("pro", "pro")]
    return ", ".join(f"{label}: {text(metrics[key])}" for label, key in names)


def timing_text(latency, images, source, postprocess_seconds):
    """Per image: the runner's network and (C++) scoring time, then postprocess.py's own (scoring in Python,
    stitching, maps, metrics)."""
    own = f"; postprocess {postprocess_seconds / images * 1000:.0f} ms per image" + \
        (" (Python scoring included)" if source != "cpp" else " (stitching, maps, metrics)")
    if not latency:
        return own
    kernels = f", OpenBLAS {'/'.join(latency['openblas_cores'])}" if latency.get("openblas_cores") else ""
    if latency["runs"] == 1:
        return f", mean predict {latency['mean_predict_ms']:.1f} ms on {latency['device_type']}{kernels}{own}"
    scoring = f" + scoring {latency['scoring_ms'] / images:.0f}" if source == "cpp" else ""
    return (f", {latency['inputs']} network inputs in {latency['runs']} runner runs, "
            f"{latency['total_ms'] / images:.0f} ms per image in C++ (network {latency['network_ms'] / images:.0f}"
            f"{scoring}) on {latency['device_type']}{kernels}{own}")


def load_inputs(args):
    """(export meta, manifest, manifest items) of the arguments, checked to belong together; InputError if not."""
    meta = load_export(args.export_dir)
    manifest, items = load_manifest(args.manifest)
    if manifest["category"] != args.category:
        raise InputError(args.manifest, f"made for category '{manifest['category']}', not '{args.category}'")
    if meta["category"] != args.category:
        raise InputError(os.path.join(args.export_dir, EXPORT_FILE),
                         f"the model was trained on '{meta['category']}', not '{args.category}'")
    if manifest["preprocess"] != meta["preprocess"]:
        raise InputError(args.manifest, "made with other preprocessing settings than this export; "
                                        "run preprocess.py again")
    if not os.path.isdir(args.result_path):
        raise InputError(args.result_path, "result folder not found")
    return meta, manifest, items


def postprocess(args):
    meta, manifest, items = load_inputs(args)
    started = time.perf_counter()
    picture_dir = os.path.join(args.output_dir, f"ng_{args.category}")
    scores, metrics, predictions, source = evaluate(meta, args.export_dir, args.result_path, items,
                                                    manifest["dataset_path"], picture_dir)
    postprocess_seconds = time.perf_counter() - started

    line = acc_line(metrics)
    row = dict(clsname=args.category, **metrics)
    table = format_table([row], columns_of([row]))
    latency = read_latency(args.result_path, scoring_jobs(meta))
    details = (f"{len(items)} test images, patch scores computed in {'C++' if source == 'cpp' else 'Python'}"
               + timing_text(latency, len(items), source, postprocess_seconds))
    if predictions is not None:
        rule = DecisionRule(meta["hr"]["thresholds"], meta["hr"]["score_normalizer"])
        decided = [p["label"] for p in predictions]
        details += (f"\n{rule.count(decided)} ({rule.describe()})"
                    + (f"; a picture of each NG or REVIEW image in {picture_dir}" if set(decided) - {OK} else ""))
    log_path = os.path.join(args.output_dir, f"acc_{args.category}.log")
    write_text(log_path, f"{line}\n\n{table}\n\n{details}\n")
    write_json(os.path.join(args.output_dir, f"acc_{args.category}.json"), {
        "category": args.category, "metrics": metrics, "score_source": source, "latency": latency,
        "scores": [{"file": item.get("file", item.get("stem")),
                    "path": os.path.relpath(sample.image_path, manifest["dataset_path"]),
                    "defect_type": sample.defect_type, "label": int(sample.label), "image_score": float(score)}
                   for (item, sample), score in zip(items, scores)],
        # predict.py's fields per image (label, normalised score, regions); null without thresholds
        "predictions": predictions})
    print(line)
    print(f"({details}; written to {log_path})")
    return 0
