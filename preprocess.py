"""Turn a category's test images into inputs of an exported model: float32 NCHW .npy files + manifest.json.

Plain model: one file per image through the training Transform (src/dataset.py) built from the settings in
EXPORT_DIR/export.json. High-resolution model: every image's tiles, in one folder per task (task_<k>/), and its
thumbnail (thumbnail/), normalised by the function training uses (src/hr_features.py; see src/hr_deploy.py).
OUTPUT_PATH is replaced as a whole; file names sort in test-list order, and manifest.json maps each file to
its image, defect type, label and mask (and for tiles: task and tile box).
"""
import argparse
import functools
import os

from tqdm import tqdm

import src  # noqa: F401  (same environment set-up as every entry point)
from src import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True, help="folder written by export.py (holds export.json)")
    parser.add_argument("--dataset_path", required=True, help="folder holding MVTec-layout categories")
    parser.add_argument("--category", required=True)
    parser.add_argument("--output_path", required=True, help="folder for the .npy inputs and manifest.json")
    return parser.parse_args()


def main():
    args = parse_args()
    from src.dataset import list_test_samples
    from src.deploy import FORMAT_VERSION, MANIFEST_FILE, is_hr_export, load_export, write_plain_inputs
    from src.io_utils import staged_folder, write_json

    meta = load_export(args.export_dir)
    if is_hr_export(meta):
        from src.hr_deploy import write_inputs
    else:
        write_inputs = write_plain_inputs
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
