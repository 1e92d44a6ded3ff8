"""What every entry point shares: arguments, logging, MindSpore context and error reporting."""
import argparse
import os
import sys

from src.utils.blas import check_gemm
from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.utils.device import set_device  # noqa: F401
from src.utils.logs import logger, logging_to, setup_logging  # noqa: F401  (the entry points' logging)

PRETRAINED_HINT = ("WARNING: no --pre_ckpt_path given: the backbone uses seeded RANDOM weights, so detection is "
                   "near chance on real defects. Convert torchvision's wide_resnet50_2-95faca4d.pth with "
                   "'python src/pthtockpt.py --pth_path ...' (or run scripts/get_mobilenet_weights.sh for "
                   "mobilenet_v2) and pass the .ckpt.")


def positive_int_argument(text):
    """argparse ``type`` of a positive integer option."""
    try:
        return positive_int(int(text), "")
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None


def base_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset_path", default=None, help="folder holding MVTec-layout categories")
    parser.add_argument("--category", required=True, help="category folder name, e.g. screw (with --train_dir or "
                                                           "--test_dir: the model's name)")
    parser.add_argument("--train_dir", default=None, help="instead of the MVTec layout: a folder of good images "
                                                          "(searched recursively)")
    parser.add_argument("--test_dir", default=None, help="instead of the MVTec layout: good/ and one folder per "
                                                         "defect type")
    parser.add_argument("--mask_dir", default=None, help="with --test_dir: <type>/<stem>_mask.png (or <stem>.png) "
                                                         "masks; without, image metrics only")
    parser.add_argument("--output_dir", default="output", help="where <category>/ is written (default: output)")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--pre_ckpt_path", default=None, help="backbone .ckpt (src/pthtockpt.py); "
                                                                  "omitted: seeded random weights")
    parser.add_argument("--config", default=None, help="YAML config (default: configs/patchcore.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seeds init, projection, coreset start")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. -o percentage=0.01 (repeatable)")
    return parser


def training_samples(args):
    """The training images the arguments name: ``--train_dir``, or the MVTec layout's train/good."""
    from src.data.folders import folder_train_samples
    from src.data.mvtec import list_train_samples
    if args.train_dir:
        return folder_train_samples(args.train_dir)
    if not args.dataset_path:
        raise InputError("--dataset_path", "give --dataset_path (MVTec layout) or --train_dir")
    return list_train_samples(args.dataset_path, args.category)


def test_samples(args):
    """The labelled test images the arguments name: ``--test_dir`` (+ ``--mask_dir``), or the MVTec layout's."""
    from src.data.folders import folder_test_samples
    from src.data.mvtec import list_test_samples
    if args.test_dir:
        return folder_test_samples(args.test_dir, args.mask_dir)
    if args.mask_dir:
        raise InputError("--mask_dir", "goes with --test_dir")
    if not args.dataset_path:
        raise InputError("--dataset_path", "give --dataset_path (MVTec layout) or --test_dir")
    return list_test_samples(args.dataset_path, args.category)


def sample_root(args, samples):
    """The folder paths in result files are relative to: the dataset or the given folder."""
    return args.dataset_path or os.path.commonpath([os.path.dirname(s.image_path) for s in samples])


def run(main):
    """Run ``main()`` after the BLAS self-check; bad input becomes one line on stderr and exit code 2."""
    try:
        check_gemm()
        code = main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
