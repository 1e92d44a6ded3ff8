"""Turn a category's test images into inputs of an exported model: float32 NCHW .npy files + manifest.json.

Images go through the training Transform (src/dataset.py) built from the settings in EXPORT_DIR/export.json.
OUTPUT_PATH is replaced as a whole; file names sort in test-list order, and manifest.json maps each file
to its image, defect type, label and mask.
"""
import argparse
import os

import numpy as np
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
    from src.dataset import Transform, list_test_samples
    from src.deploy import FORMAT_VERSION, MANIFEST_FILE, input_file_name, load_export, manifest_entry, single_model
    from src.errors import InputError
    from src.io_utils import staged_folder, write_json

    meta = load_export(args.export_dir)
    model = single_model(meta, args.export_dir)
    transform = Transform.from_config(meta["preprocess"])
    if model["input_shape"] != [1, 3, transform.imagesize, transform.imagesize]:
        raise InputError(os.path.join(args.export_dir, "export.json"),
                         f"model input {model['input_shape']} does not fit the preprocessing "
                         f"(crop {transform.imagesize})")
    samples = list_test_samples(args.dataset_path, args.category)
    dataset_path = os.path.abspath(args.dataset_path)
    with staged_folder(args.output_path) as stage:
        items = []
        for position, sample in enumerate(tqdm(samples, desc="preprocess", unit="img", disable=None)):
            name = input_file_name(position, sample)
            np.save(os.path.join(stage, name), transform.image(sample.image_path)[np.newaxis])
            items.append(manifest_entry(name, sample, dataset_path))
        write_json(os.path.join(stage, MANIFEST_FILE), {
            "format_version": FORMAT_VERSION, "category": args.category, "dataset_path": dataset_path,
            "export_dir": os.path.abspath(args.export_dir), "preprocess": meta["preprocess"],
            "input_shape": model["input_shape"], "input_dtype": model["input_dtype"], "items": items})
    print(f"wrote {len(items)} inputs and {MANIFEST_FILE} to {args.output_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
