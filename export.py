"""Export a trained category's feature extractor to MINDIR, for MindSpore and for the C++ runner.

Writes OUTPUT_DIR (default CHECKPOINT_DIR/export/), replacing it as a whole: for each input size the model
uses, patchcore_<H>x<W>.mindir (MindSpore 2.x, loadable with mindspore.load) and patchcore_<H>x<W>_lite.mindir
(MINDIR v1 for MindSpore Lite and ascend310_infer/patchcore_infer): one for the tile size (224 for a 224-pixel
model) and one for the thumbnail size; a copy of every task's bank (task_<k>/, thumbnail/), model.json and
tasks.json; and export.json (view and normalisation, input shapes, feature grids, tasks, scoring settings,
sha256 of every file); see src/deploy/export.py.
"""
import argparse
import os

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True,
                        help="a trained category: OUTPUT_DIR/CATEGORY of train.py (model.json, tasks.json, "
                             "task_<k>/)")
    parser.add_argument("--ckpt_file", default=None,
                        help="backbone .ckpt the bank was trained with (omit for a bank of random weights)")
    parser.add_argument("--file_format", default="MINDIR", choices=["MINDIR"])
    parser.add_argument("--output_dir", default=None, help="default: CHECKPOINT_DIR/export")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    from src.deploy.export import export_checkpoint

    cli.setup_logging()
    output_dir = args.output_dir or os.path.join(args.checkpoint_dir, "export")
    meta = export_checkpoint(args.checkpoint_dir, args.ckpt_file, output_dir, args.file_format,
                             (args.device_target, args.device_id))
    print(os.path.join(output_dir, meta["models"][0]["lite_mindir"]))
    return 0


if __name__ == "__main__":
    cli.run(main)
