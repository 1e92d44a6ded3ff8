"""Train PatchCore on one category: normal images -> patch features -> coreset memory bank(s).

Writes <output_dir>/<category>/: model.json, tasks.json, task_<k>/ (faiss.index, bank.json), train_result.json
and logs/ (see src/app/train.py).
"""
import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli
from src.training.backends import RUNNERS


def main():
    parser = cli.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=cli.positive_int_argument, default=None,
                        help="local worker processes for the banks (default: as many as fit in memory)")
    parser.add_argument("--backend", choices=RUNNERS.names, default=None,
                        help="where the banks are trained (default: the config's runner.backend, local)")
    parser.add_argument("--ray_address", default=None, help="with --backend ray: a running cluster, auto or "
                                                            "HOST:PORT (default: runner.address, else Ray on "
                                                            "this machine); docs/scaling.md")
    parser.add_argument("--val_dir", default=None, help="real labelled validation images for the thresholds: good/ "
                                                        "and one folder per defect type")
    parser.add_argument("--val_mask_dir", default=None, help="with --val_dir: their masks (<type>/<stem>_mask.png)")
    parser.add_argument("--check_dataset", action="store_true",
                        help="only check the dataset: OUTPUT_DIR/CATEGORY/check_dataset/, exit 0 or 2")
    args = parser.parse_args()
    if args.check_dataset:
        from src.app.check import check
        return check(args)
    from src.app.train import train
    from src.config.loader import load_config
    return train(args, load_config(args.config, args.override))


if __name__ == "__main__":
    cli.run(main)
