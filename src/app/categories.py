"""``python -m src.app.categories``: every category trained and evaluated as one Ray task (scripts/run_all_mvtec.sh
with ``BACKEND=ray``; docs/scaling.md).

    python -m src.app.categories [--address HOST:PORT] [--cpus N] DATASET_PATH PRE_CKPT_PATH DEVICE_ID OUTPUT_DIR
                                 CATEGORY [CATEGORY ...] [-- train.py args]

A task runs the serial loop's own two steps on its node, ``scripts/run_train.sh`` then ``scripts/run_eval.sh``
(train.py with ``--workers N``: the task's CPUs), so a category's model and metrics are those of the serial run.
Every node must see the project, the dataset and OUTPUT_DIR at the same paths (a shared filesystem): each
category writes its own folder there, train.py's resume works as on one machine, and the driver checks that it
reads the ``eval/metrics.json`` each node wrote. Each category's output comes back to the driver and is printed
as the category finishes, with the node it ran on. Exit status 0, or 1 when a category failed (the others are
kept and reported by ``src.evaluation.report``), 2 on bad arguments.
"""
import argparse
import os
import subprocess
import sys

from src.app.cli import positive_int_argument
from src.utils.io import sha256_of
from src.utils.ray_tasks import collect_as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = os.path.join("eval", "metrics.json")


def category_commands(dataset_path, pre_ckpt_path, device_id, output_dir, category, cpus, train_args):
    """The serial loop's two commands for ``category`` (scripts/run_all_mvtec.sh)."""
    common = [dataset_path, str(device_id), pre_ckpt_path, category, output_dir]
    return [["bash", os.path.join(ROOT, "scripts", "run_train.sh"), *common, "--workers", str(cpus), *train_args],
            ["bash", os.path.join(ROOT, "scripts", "run_eval.sh"), *common]]


def file_sha256(path):
    """The file's sha256, or None where there is none."""
    return sha256_of(path) if os.path.isfile(path) else None


def run_category(commands, metrics_path):
    """On a node: run ``commands`` in turn until one fails. (exit status, output, sha256 of the metrics file the
    node wrote or None, node id)."""
    import ray
    output, status = [], 0
    for command in commands:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output.append(done.stdout)
        status = done.returncode
        if status:
            break
    return status, "".join(output), file_sha256(metrics_path), ray.get_runtime_context().get_node_id()


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="a running cluster, auto or HOST:PORT (default: "
                                                        "RAY_ADDRESS, else Ray on this machine)")
    parser.add_argument("--cpus", type=positive_int_argument, default=1, help="CPUs per category task (default 1)")
    parser.add_argument("dataset_path")
    parser.add_argument("pre_ckpt_path", help='backbone .ckpt, or "none"')
    parser.add_argument("device_id", type=int)
    parser.add_argument("output_dir")
    parser.add_argument("categories", nargs="+")
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    return args, train_args


def main(argv=None):
    args, train_args = parse(sys.argv[1:] if argv is None else argv)
    import ray
    from tqdm import tqdm
    output_dir = os.path.abspath(args.output_dir)   # the same path on every node
    os.makedirs(output_dir, exist_ok=True)
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    remote = ray.remote(run_category).options(num_cpus=args.cpus, max_retries=2)
    failed = []

    def report(category, result):
        status, output, written, node = result
        tqdm.write(f"=== {category} (node {node})\n{output.rstrip()}", file=sys.stdout)
        if not status and written != file_sha256(os.path.join(output_dir, category, METRICS)):
            tqdm.write(f"error: {os.path.join(output_dir, category, METRICS)}: not what node {node} wrote "
                       f"there: OUTPUT_DIR must be at the same path on every node (a shared filesystem)",
                       file=sys.stderr)
            status = 1
        if status:
            failed.append(category)

    try:
        print(f"Ray cluster: {ray.cluster_resources()}; {len(args.categories)} categories as tasks of "
              f"{args.cpus} CPU(s) each", flush=True)
        pending = {remote.remote(category_commands(os.path.abspath(args.dataset_path), args.pre_ckpt_path,
                                                   args.device_id, output_dir, category, args.cpus, train_args),
                                 os.path.join(output_dir, category, METRICS)): category
                   for category in args.categories}
        # a failed category does not stop the others; after Ctrl-C the ones still running are cancelled
        collect_as_completed(pending, report, lambda category, cause: (1, cause, None, "lost"),
                             "categories", "category")
    finally:
        ray.shutdown()
    if failed:
        print(f"error: failed categories: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
