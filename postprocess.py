"""Turn the C++ runner's outputs into scores, anomaly maps, decisions and metrics: acc_<CATEGORY>.log and
acc_<CATEGORY>.json, and a picture of every NG or REVIEW image in ng_<CATEGORY>/ (see src/app/postprocess.py).

Patch scores come from <stem>_scores.npy (the runner scored with --bank_path) or, when no input has one,
from the patch features <stem>_0.npy and the exported memory bank, in Python with faiss. Image scores,
maps and metrics use the functions eval.py uses, so the numbers are comparable one to one: the tile grids of
every task folder go through the task's normaliser and are stitched (with the thumbnail's) as eval.py does
(see src/deploy/outputs.py). Every image also gets predict.py's decision (OK, REVIEW or NG at the model's
thresholds, its normalised score, its regions: an NG or REVIEW image always has one), in acc_<CATEGORY>.json's
"predictions".
"""
import argparse

import src  # noqa: F401  (same environment set-up as every entry point)
from src.app import cli


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True, help="folder written by export.py (holds export.json)")
    parser.add_argument("--result_path", required=True, help="--result_path of patchcore_infer")
    parser.add_argument("--manifest", required=True, help="manifest.json written by preprocess.py")
    parser.add_argument("--category", required=True)
    parser.add_argument("--output_dir", default=".", help="where acc_<CATEGORY>.log/.json go (default: .)")
    return parser.parse_args()


def main():
    args = parse_args()
    from src.app.postprocess import postprocess
    return postprocess(args)


if __name__ == "__main__":
    cli.run(main)
