"""Teach a trained model what is OK without retraining: normal images join it as a new, reversible model version.

python teach.py --model_dir OUTPUT/CATEGORY --input PATH [PATH ...] [--keep_active]
    (a new version from these normal images; made the active one unless --keep_active)
python teach.py --model_dir OUTPUT/CATEGORY --versions                (list the versions)
python teach.py --model_dir OUTPUT/CATEGORY --activate N              (make version N the active one: roll back)
python teach.py --model_dir OUTPUT/CATEGORY --rollback                (the active version's parent)
PATH: an image, a folder searched recursively, or a text file of paths (as predict.py takes them).
"""
import argparse

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a trained model: OUTPUT_DIR/CATEGORY of train.py")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--input", nargs="+", metavar="PATH", help="normal images to teach (e.g. reviewed false "
                                                                     "alarms): image files, folders, lists")
    action.add_argument("--versions", action="store_true", help="list the model's versions")
    action.add_argument("--activate", type=cli.positive_int_argument, metavar="N", help="make version N active")
    action.add_argument("--rollback", action="store_true", help="make the active version's parent active")
    parser.add_argument("--keep_active", action="store_true",
                        help="build the new version without making it active (teach.py --activate N later)")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--pre_ckpt_path", default=None, help="backbone .ckpt (default: the one model.json records)")
    args = parser.parse_args()
    from src.app.teach import teach
    return teach(args)


if __name__ == "__main__":
    cli.run(main)
