"""Write a deterministic MVTec-AD-layout category: a textured surface with realistic defects and exact masks.

python generate_data.py --output_path data --category synthetic_leather --texture leather --image_size 256 --seed 0
"""
import argparse

import src  # noqa: F401
from src.app.cli import run
from src.data.synthetic import DEFECT_TYPES, TEXTURES, generate_category, parse_image_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--output_path", default="data", help="dataset root; <category>/ is written inside")
    parser.add_argument("--category", default="synthetic_leather", help="category folder name")
    parser.add_argument("--texture", default="leather", help=f"one of {', '.join(TEXTURES)}")
    parser.add_argument("--image_size", default="256", help="N or WxH in pixels (default 256)")
    parser.add_argument("--n_train", type=int, default=20, help="defect-free training images")
    parser.add_argument("--n_test_good", type=int, default=5, help="defect-free test images")
    parser.add_argument("--n_test_defect", type=int, default=5, help="test images per defect type")
    parser.add_argument("--defect_types", default=",".join(DEFECT_TYPES), help="comma-separated subset of "
                                                                                  f"{', '.join(DEFECT_TYPES)}")
    parser.add_argument("--min_defect_px", type=float, default=None, help="smallest defect extent "
                                                                          "(default 5%% of the shorter side)")
    parser.add_argument("--max_defect_px", type=float, default=None, help="largest defect extent "
                                                                          "(default 20%% of the shorter side)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing category folder")
    args = parser.parse_args()
    summary = generate_category(
        args.output_path, category=args.category, texture=args.texture, image_size=parse_image_size(args.image_size),
        n_train=args.n_train, n_test_good=args.n_test_good, n_test_defect_per_type=args.n_test_defect,
        defect_types=[d.strip() for d in args.defect_types.split(",") if d.strip()], seed=args.seed,
        min_defect_px=args.min_defect_px, max_defect_px=args.max_defect_px, overwrite=args.overwrite, progress=True)
    counts = ", ".join(f"{folder}: {count}" for folder, count in summary["counts"].items())
    print(f"wrote {summary['path']} in {summary['seconds']} s ({counts})")


if __name__ == "__main__":
    run(main)
