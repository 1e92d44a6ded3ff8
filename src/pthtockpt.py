"""Convert a torchvision backbone state dict (.pth/.pt) into a MindSpore .ckpt, without torch (model-zoo entry).

Usage: python src/pthtockpt.py --pth_path wide_resnet50_2-95faca4d.pth [--backbone_name wideresnet50]
       [--ckpt_path out.ckpt] [--layers_to_extract_from layer2 layer3]
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as `python src/pthtockpt.py`: import `src` from the repo root, not src/
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import src  # noqa: E402,F401  (sets the oneDNN ISA before mindspore loads)
from src.app import cli  # noqa: E402
from src.backbones.torch_checkpoint import convert  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a torch backbone state dict to a MindSpore .ckpt "
                                                 "(torch is not needed).")
    parser.add_argument("--pth_path", required=True, help="torch .pth/.pt state dict, e.g. "
                                                          "wide_resnet50_2-95faca4d.pth")
    parser.add_argument("--backbone_name", default="wideresnet50",
                        help="wideresnet50 (alias wide_resnet50_2) or mobilenet_v2 (default: wideresnet50)")
    parser.add_argument("--ckpt_path", default=None, help="output .ckpt (default: the .pth path with .ckpt)")
    parser.add_argument("--layers_to_extract_from", nargs="+", default=None, metavar="LAYER",
                        help="keep only the stages up to the deepest of these taps, e.g. layer2 layer3 "
                             "(default: all stages, so any tap can be used)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    convert(args.pth_path, args.backbone_name, args.ckpt_path, args.layers_to_extract_from)
    return 0


if __name__ == "__main__":
    cli.run(main)
