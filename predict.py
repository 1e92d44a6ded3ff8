"""Predict new images with a trained model: score, OK/REVIEW/NG at the model's thresholds, regions, picture.

python predict.py --model_dir OUTPUT/CATEGORY --input PATH [PATH ...] [--output_dir DIR] [--device_target CPU]
    [--batch_size N] [--save_map] [--print] [--model_version N]
    (PATH: an image, a folder searched recursively, or a text file of paths)
"""
import argparse

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a trained model: OUTPUT_DIR/CATEGORY of train.py")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, folders (recursive) or text files listing images")
    parser.add_argument("--output_dir", default=None, help="default: MODEL_DIR/predict")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--batch_size", type=cli.positive_int_argument, default=None,
                        help="images per network call (default: the model's)")
    parser.add_argument("--save_map", action="store_true", help="also write each raw anomaly map as .npy")
    parser.add_argument("--print", action="store_true", help="print every result as one JSON line")
    parser.add_argument("--pre_ckpt_path", default=None, help="backbone .ckpt (default: the one model.json records)")
    parser.add_argument("--model_version", type=cli.positive_int_argument, default=None, metavar="N",
                        help="a version of the model (teach.py --versions) other than the active one")
    args = parser.parse_args()
    from src.app.predict import predict
    return predict(args)


if __name__ == "__main__":
    cli.run(main)
