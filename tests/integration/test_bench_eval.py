"""benchmarks/bench_eval.py on a small trained model: the per-image parts add up to eval.py's per-image cost, and
the ratio it prints is that cost over network + scoring (the bound the evaluation is held to)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_the_parts_of_an_evaluation_add_up_to_its_cost(small_model, small_dataset, tmp_path):
    folder, _ = small_model
    out = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_eval", "--model_dir", str(folder),
                             "--dataset_path", str(small_dataset), "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(out.read_text())
    assert row["model"] == "synthetic_leather" and row["images"] == 7
    parts = ("network_s", "scoring_s", "map_s", "loading_s", "evaluation_s")
    assert all(row[part] >= 0 for part in parts) and row["network_s"] > 0 and row["scoring_s"] > 0
    assert sum(row[part] for part in parts) == pytest.approx(row["eval_s"], abs=5e-4)
    assert row["eval_over_network_scoring"] == pytest.approx(
        row["eval_s"] / (row["network_s"] + row["scoring_s"]), rel=0.05)
