"""train.py --check_dataset: what the dataset holds and what is wrong with it, before any training (PaddleX's
check_dataset mode). Writes OUTPUT_DIR/CATEGORY/check_dataset/: check_dataset_result.json, image_sizes.png and
samples.png; prints ``Check dataset passed !`` (exit 0) or one line per problem (exit 2)."""
import os
import sys

from src.data.check import check_dataset
from src.data.mvtec import category_root
from src.evaluation.visualize import save_picture
from src.utils.io import staged_folder, write_json


def dataset_folders(args):
    """(train_dir, test_dir, mask_dir) the arguments name."""
    if args.train_dir or args.test_dir:
        return args.train_dir, args.test_dir, args.mask_dir
    root = category_root(args.dataset_path, args.category)
    return os.path.join(root, "train", "good"), os.path.join(root, "test"), os.path.join(root, "ground_truth")


def check(args):
    report, pictures = check_dataset(*dataset_folders(args), seed=args.seed)
    with staged_folder(os.path.join(args.output_dir, args.category, "check_dataset")) as stage:
        write_json(os.path.join(stage, "check_dataset_result.json"), report)
        save_picture(os.path.join(stage, "image_sizes.png"), pictures["sizes"])
        save_picture(os.path.join(stage, "samples.png"), pictures["samples"])
    if report["check_pass"]:
        print("Check dataset passed !")
        return 0
    for problem in report["problems"]:
        print(f"error: {problem['path']}: {problem['problem']}", file=sys.stderr)
    return 2
