"""Turn a category's test images into inputs of an exported model: float32 NCHW .npy files + manifest.json.

Every image is seen through the model's view (EXPORT_DIR/export.json), cut into its tiles, one folder per task
(task_<k>/), plus its thumbnail (thumbnail/), normalised by the function training uses (see src/deploy/inputs.py).
OUTPUT_PATH is replaced as a whole; file names sort in test-list order, and manifest.json maps each file to
its image, defect type, label and mask (and for tiles: task and tile box).
"""
import argparse
import functools
import os

from tqdm import tqdm

import src  # noqa: F401  (same environment set-up as every entry point)
from src.app import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True, help="folder written by export.py (holds export.json)")
    parser.add_argument("--dataset_path", required=True, help="folder holding MVTec-layout categories")
    parser.add_argument("--category", required=True)
    parser.add_argument("--output_path", required=True, help="folder for the .npy inputs and manifest.json")
    return parser.parse_args()


def main():
    args = parse_args()
    from src.data.mvtec import list_test_samples
    from src.deploy.export import FORMAT_VERSION
    from src.deploy.inputs import write_inputs
    from src.deploy.package import MANIFEST_FILE, load_export
    from src.utils.io import staged_folder, write_json

    meta = load_export(args.export_dir)
    samples = list_test_samples(args.dataset_path, args.category)
    dataset_path = os.path.abspath(args.dataset_path)
    progress = functools.partial(tqdm, desc="preprocess", unit="img", disable=None)
    with staged_folder(args.output_path) as stage:
        items, header = write_inputs(meta, args.export_dir, samples, dataset_path, stage, progress)
        write_json(os.path.join(stage, MANIFEST_FILE), {
            "format_version": FORMAT_VERSION, "category": args.category, "dataset_path": dataset_path,
            "export_dir": os.path.abspath(args.export_dir), "preprocess": meta["preprocess"], **header,
            "items": items})
    print(f"wrote the inputs of {len(items)} images and {MANIFEST_FILE} to {args.output_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
