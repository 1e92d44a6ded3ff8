"""Turn the C++ runner's outputs into scores, anomaly maps and metrics: acc_<CATEGORY>.log and acc_<CATEGORY>.json.

Patch scores come from <stem>_scores.npy (the runner scored with --bank_path) or, when no input has one,
from the patch features <stem>_0.npy and the exported memory bank, in Python with faiss. Image scores,
maps and metrics use the functions eval.py uses, so the numbers are comparable one to one.
"""
import argparse
import os

import numpy as np

import src  # noqa: F401  (same environment set-up as every entry point)
from src import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True, help="folder written by export.py (holds export.json)")
    parser.add_argument("--result_path", required=True, help="--result_path of patchcore_infer")
    parser.add_argument("--manifest", required=True, help="manifest.json written by preprocess.py")
    parser.add_argument("--category", required=True)
    parser.add_argument("--output_dir", default=".", help="where acc_<CATEGORY>.log/.json go (default: .)")
    return parser.parse_args()


def load_array(path, shape):
    """A float32 .npy file of exactly ``shape``."""
    from src.errors import InputError
    if not os.path.isfile(path):
        raise InputError(path, "runner output missing (did the runner process every input of the manifest?)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable .npy ({exc})") from None
    if array.dtype != np.float32 or list(array.shape) != list(shape):
        raise InputError(path, f"{array.dtype} {list(array.shape)} but float32 {list(shape)} was expected")
    return array


def patch_score_grids(result_path, stems, model, export_dir, num_nn):
    """([h, w] patch-score grid per stem, "cpp" or "python")."""
    from src.errors import InputError
    grid_shape = model["feature_grid"]
    score_files = [os.path.join(result_path, f"{stem}_scores.npy") for stem in stems]
    present = [os.path.isfile(path) for path in score_files]
    if all(present):
        return [load_array(path, grid_shape) for path in score_files], "cpp"
    if any(present):
        raise InputError(result_path, f"only {sum(present)} of {len(stems)} inputs have _scores.npy: outputs of "
                                      "different runs are mixed; run the runner again into an empty folder")
    from src.features import to_patch_rows
    from src.memory_bank import MemoryBank
    bank = MemoryBank.load(export_dir)
    grids = []
    for stem in stems:
        rows, (h, w) = to_patch_rows(load_array(os.path.join(result_path, f"{stem}_0.npy"), model["output_shape"]))
        grids.append(bank.patch_scores(rows, num_nn).reshape(h, w))
    return grids, "python"


def acc_line(metrics):
    """The model zoo's summary line, followed by the other metrics."""
    def text(value):
        return "n/a" if value is None else f"{value:g}"
    names = [("img_auc", "image_auroc"), ("pixel_auc", "pixel_auroc"), ("pixel_ap", "pixel_ap"),
             ("pixel_f1", "pixel_f1"), ("pro", "pro")]
    return ", ".join(f"{label}: {text(metrics[key])}" for label, key in names)


def read_latency(result_path):
    """The runner's timing summary, if it wrote one."""
    from src.deploy import read_json
    path = os.path.join(result_path, "latency.json")
    if not os.path.isfile(path):
        return None
    latency = read_json(path, "runner latency file")
    return {key: latency.get(key) for key in ("device_type", "threads", "model_load_ms", "mean_predict_ms")}


def main():
    args = parse_args()
    from src.anomaly_map import anomaly_map, image_score
    from src.dataset import Transform
    from src.deploy import EXPORT_FILE, load_export, load_manifest, single_model
    from src.errors import InputError
    from src.io_utils import write_json, write_text
    from src.metrics import compute_metrics, format_table

    meta = load_export(args.export_dir)
    model = single_model(meta, args.export_dir)
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
    scoring = meta["scoring"]
    stems = [os.path.splitext(name)[0] for name, _ in items]
    grids, source = patch_score_grids(args.result_path, stems, model, args.export_dir, int(scoring["num_nn"]))

    transform = Transform.from_config(meta["preprocess"])
    size = (transform.imagesize, transform.imagesize)
    samples = [sample for _, sample in items]
    scores = np.array([image_score(grid) for grid in grids], np.float64)
    maps = np.stack([anomaly_map(grid, size, float(scoring["gaussian_sigma"])) for grid in grids])
    masks = np.stack([transform.mask(sample) for sample in samples])
    metrics = compute_metrics(scores, np.array([sample.label for sample in samples]), maps, masks)

    line = acc_line(metrics)
    table = format_table([dict(clsname=args.category, **metrics)],
                         ["clsname", "image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1", "pro"])
    latency = read_latency(args.result_path)
    details = f"{len(samples)} test images, patch scores computed in {'C++' if source == 'cpp' else 'Python'}"
    if latency:
        details += f", mean predict {latency['mean_predict_ms']:.1f} ms on {latency['device_type']}"
    log_path = os.path.join(args.output_dir, f"acc_{args.category}.log")
    write_text(log_path, f"{line}\n\n{table}\n\n{details}\n")
    write_json(os.path.join(args.output_dir, f"acc_{args.category}.json"), {
        "category": args.category, "metrics": metrics, "score_source": source, "latency": latency,
        "scores": [{"file": name, "path": os.path.relpath(sample.image_path, manifest["dataset_path"]),
                    "defect_type": sample.defect_type, "label": int(sample.label), "image_score": float(score)}
                   for (name, sample), score in zip(items, scores)]})
    print(line)
    print(f"({details}; written to {log_path})")
    return 0


if __name__ == "__main__":
    cli.run(main)
