"""The project's command-line scripts run from a benchmark: timed, in the project folder, and ending the benchmark
with the script's output when it fails."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

from src.utils.io import read_json

ROOT = Path(__file__).resolve().parents[1]


def run_cli(script, args, cores=None):
    """(wall seconds, stdout) of ``python SCRIPT ARGS``, on the first ``cores`` cores only if given (taskset)."""
    pin = ["taskset", "-c", f"0-{cores - 1}"] if cores else []
    started = time.perf_counter()
    result = subprocess.run([*pin, sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def train_from_scratch(data, out, category, args, cores=None):
    """train.py (seed 0, ``args`` added) on ``category`` into ``out``, its folder removed first so that nothing is
    resumed: (wall seconds, model.json)."""
    shutil.rmtree(Path(out) / category, ignore_errors=True)
    wall, _ = run_cli("train.py", ["--dataset_path", data, "--category", category, "--output_dir", out,
                                   "--seed", "0", *args], cores)
    return wall, read_json(str(Path(out) / category / "model.json"), "model")
