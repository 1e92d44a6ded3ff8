"""Fixtures shared by several test files."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER_DIR = Path(__file__).resolve().parents[1] / "ascend310_infer"


@pytest.fixture(scope="session")
def runner():
    """Path of a freshly (re)built ascend310_infer/build/patchcore_infer binary.

    The first build on a machine downloads the MindSpore Lite 2.0.0 wheel (~170 MB) from PyPI.
    """
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(RUNNER_DIR / "build.sh")], env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    binary = RUNNER_DIR / "build" / "patchcore_infer"
    assert binary.is_file()
    return binary
