"""What export.py, preprocess.py, postprocess.py and scripts/run_infer_cpp.sh share.

``export.json`` (written by export.py beside the models) is the one description of a deployed model: the
input (shape, dtype and the ``Transform`` settings that make it), the output (feature grid, embedding
size), the scoring (memory bank, ``num_nn``, gaussian sigma) and the sha256 of every file. Pre- and
post-processing read it instead of repeating constants. ``manifest.json`` (written by preprocess.py) maps
every model input file to its test image.

``python -m src.deploy runner_args MODEL.mindir`` prints the C++ runner's model and bank arguments for an
exported model, one per line (used by scripts/run_infer_cpp.sh).
"""
import json
import os
import sys

from src.dataset import Sample
from src.errors import InputError
from src.memory_bank import sha256_of

EXPORT_FILE = "export.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def model_input_sizes(config):
    """(height, width) of every input the deployed feature extractor sees, without repeats.

    A plain config feeds whole images at ``data.imagesize``; a high-resolution config adds its tile and
    thumbnail sizes to this list, and export.py writes one model per entry.
    """
    size = int(config["data"]["imagesize"])
    return [(size, size)]


def model_file_names(height, width):
    """(MindSpore 2.x MINDIR, MINDIR v1 for MindSpore Lite and the C++ runner) for one input size."""
    base = f"patchcore_{height}x{width}"
    return f"{base}.mindir", f"{base}_lite.mindir"


def read_json(path, what):
    if not os.path.isfile(path):
        raise InputError(path, f"{what} not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable {what} ({exc})") from None


def load_export(export_dir):
    """export.json of an export folder, checked for its format version."""
    path = os.path.join(export_dir, EXPORT_FILE)
    if not os.path.isfile(path):
        raise InputError(path, "export metadata not found (run export.py first)")
    meta = read_json(path, "export metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    return meta


def verify_files(export_dir, meta, names):
    """Each named file exists and has the sha256 that export.json records for it."""
    for name in names:
        path = os.path.join(export_dir, name)
        if not os.path.isfile(path):
            raise InputError(path, f"missing (listed in {EXPORT_FILE})")
        if sha256_of(path) != meta["files"][name]:
            raise InputError(path, f"sha256 differs from {EXPORT_FILE}: the file was replaced or is damaged; "
                                   "run export.py again")


def single_model(meta, export_dir):
    """The one model of an export that feeds whole images (the plain, non-tiled case)."""
    if len(meta["models"]) != 1:
        raise InputError(os.path.join(export_dir, EXPORT_FILE),
                         f"{len(meta['models'])} input sizes; this step handles single-size exports")
    return meta["models"][0]


def runner_arguments(mindir_path):
    """patchcore_infer's --mindir_path/--bank_path/--num_nn for an exported model (either of its two files)."""
    export_dir = os.path.dirname(os.path.abspath(mindir_path))
    if not os.path.isfile(mindir_path):
        raise InputError(mindir_path, "model file not found")
    meta = load_export(export_dir)
    name = os.path.basename(mindir_path)
    models = [m for m in meta["models"] if name in (m["mindir"], m["lite_mindir"])]
    if not models:
        listed = ", ".join(m["lite_mindir"] for m in meta["models"])
        raise InputError(mindir_path, f"not a model listed in {os.path.join(export_dir, EXPORT_FILE)} ({listed})")
    scoring = meta["scoring"]
    verify_files(export_dir, meta, [models[0]["lite_mindir"], scoring["bank_file"]])
    return ["--mindir_path", os.path.join(export_dir, models[0]["lite_mindir"]),
            "--bank_path", os.path.join(export_dir, scoring["bank_file"]), "--num_nn", str(scoring["num_nn"])]


def input_file_name(position, sample):
    """Unique, sorting in test-list order (the runner processes a folder in name order)."""
    stem = os.path.splitext(os.path.basename(sample.image_path))[0]
    return f"{position:04d}_{sample.defect_type}_{stem}.npy"


def manifest_entry(file_name, sample, dataset_path):
    return {"file": file_name, "image": os.path.relpath(sample.image_path, dataset_path),
            "defect_type": sample.defect_type, "label": int(sample.label),
            "mask": None if sample.mask_path is None else os.path.relpath(sample.mask_path, dataset_path)}


def load_manifest(path):
    """(manifest dict, [(input file name, Sample)]) with the dataset paths made absolute again."""
    manifest = read_json(path, "manifest")
    for key in ("format_version", "category", "dataset_path", "preprocess", "items"):
        if key not in manifest:
            raise InputError(path, f"not a manifest written by preprocess.py (no '{key}')")
    root = manifest["dataset_path"]
    items = [(item["file"], Sample(os.path.join(root, item["image"]), item["defect_type"], int(item["label"]),
                                   None if item["mask"] is None else os.path.join(root, item["mask"])))
             for item in manifest["items"]]
    return manifest, items


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "runner_args":
        print("usage: python -m src.deploy runner_args MODEL.mindir", file=sys.stderr)
        return 2
    try:
        print("\n".join(runner_arguments(argv[1])))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
