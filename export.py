"""Export a trained category's feature extractor to MINDIR, for MindSpore and for the C++ runner.

Writes OUTPUT_DIR (default CHECKPOINT_DIR/export/), replacing it as a whole: for each input size the model
uses, patchcore_<H>x<W>.mindir (MindSpore 2.x, loadable with mindspore.load) and patchcore_<H>x<W>_lite.mindir
(MINDIR v1 for MindSpore Lite and ascend310_infer/patchcore_infer); a copy of the memory bank (faiss.index,
bank.json); and export.json (input shape and preprocessing, feature grid, scoring settings, sha256 of every file).
"""
import argparse
import os
import shutil

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True,
                        help="a trained category: OUTPUT_DIR/CATEGORY of train.py (bank.json, faiss.index)")
    parser.add_argument("--ckpt_file", default=None,
                        help="backbone .ckpt the bank was trained with (omit for a bank of random weights)")
    parser.add_argument("--file_format", default="MINDIR", choices=["MINDIR"])
    parser.add_argument("--output_dir", default=None, help="default: CHECKPOINT_DIR/export")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    return parser.parse_args()


def make_user_files(folder):
    """mindspore.export writes mode 0400 and mkstemp 0600: give every file the usual umask-based mode so
    that users can replace and share the export."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def main():
    args = parse_args()
    import numpy as np

    from src.deploy import EXPORT_FILE, FORMAT_VERSION, model_file_names, model_input_sizes
    from src.errors import InputError
    from src.io_utils import staged_folder, write_json
    from src.memory_bank import INDEX_FILE, METADATA_FILE, MemoryBank, check_backbone_checkpoint, sha256_of

    if not os.path.isfile(os.path.join(args.checkpoint_dir, METADATA_FILE)):
        from src.hr_inference import MODEL_FILE as HR_MODEL_FILE
        if os.path.isfile(os.path.join(args.checkpoint_dir, HR_MODEL_FILE)):
            raise InputError(args.checkpoint_dir, "a high-resolution model (one bank per task); export.py "
                                                  "handles single-bank models so far")
    bank = MemoryBank.load(args.checkpoint_dir)
    bank_meta = bank.metadata
    config = bank_meta["config"]
    check_backbone_checkpoint(bank_meta, args.ckpt_file, "--ckpt_file")
    cli.set_device(args.device_target, args.device_id)
    import mindspore as ms

    from src.mindir_compat import convert_mindir_to_v1
    from src.patchcore import build_extractor

    cli.setup_logging()
    extractor, pretrained = build_extractor(config["patch"], args.ckpt_file, bank_meta["seed"])
    output_dir = args.output_dir or os.path.join(args.checkpoint_dir, "export")
    with staged_folder(output_dir) as stage:
        models = []
        for height, width in model_input_sizes(config):
            example = ms.Tensor(np.zeros((1, 3, height, width), np.float32))
            output_shape = [int(v) for v in extractor(example).shape]
            if output_shape[1] != bank.dimension:
                raise InputError(args.checkpoint_dir, f"the config's features have dimension {output_shape[1]} "
                                                      f"but the bank {bank.dimension}")
            mindir, lite_mindir = model_file_names(height, width)
            ms.export(extractor, example, file_name=os.path.join(stage, os.path.splitext(mindir)[0]),
                      file_format=args.file_format)
            convert_mindir_to_v1(os.path.join(stage, mindir), os.path.join(stage, lite_mindir))
            models.append({"input_shape": [1, 3, height, width], "input_dtype": "float32", "layout": "NCHW",
                           "output_shape": output_shape, "feature_grid": output_shape[2:],
                           "embed_dim": output_shape[1], "mindir": mindir, "lite_mindir": lite_mindir})
            cli.logger.info("exported %s and %s: input %s -> patch features %s", mindir, lite_mindir,
                            models[-1]["input_shape"], output_shape)
        for name in (INDEX_FILE, METADATA_FILE):
            shutil.copyfile(os.path.join(args.checkpoint_dir, name), os.path.join(stage, name))
        files = {name: sha256_of(os.path.join(stage, name)) for name in sorted(os.listdir(stage))}
        write_json(os.path.join(stage, EXPORT_FILE), {
            "format_version": FORMAT_VERSION,
            "category": bank_meta["category"],
            "source": {"checkpoint_dir": os.path.abspath(args.checkpoint_dir),
                       "backbone_checkpoint": os.path.abspath(args.ckpt_file) if args.ckpt_file else None,
                       "backbone_checkpoint_sha256": bank_meta.get("backbone_checkpoint_sha256"),
                       "pretrained": pretrained, "seed": bank_meta["seed"]},
            # Exactly the settings Transform.from_config reads: preprocess.py rebuilds the training transform.
            "preprocess": {key: config["data"][key] for key in ("resize", "imagesize", "mean", "std")},
            "models": models,
            "scoring": {"bank_file": INDEX_FILE, "bank_sha256": files[INDEX_FILE], "bank_size": len(bank),
                        "bank_dimension": bank.dimension,
                        "num_nn": int(config["patch"]["anomaly_scorer_num_nn"]),
                        "gaussian_sigma": float(config["postprocess"]["gaussian_sigma"])},
            "config": config,
            "files": files,
            "versions": {"mindspore": ms.__version__},
        })
        make_user_files(stage)
    cli.logger.info("export written to %s", output_dir)
    print(os.path.join(output_dir, models[0]["lite_mindir"]))
    return 0


if __name__ == "__main__":
    cli.run(main)
