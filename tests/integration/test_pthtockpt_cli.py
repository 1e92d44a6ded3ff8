"""The torch -> MindSpore checkpoint converter run as a program (``python -m src.pthtockpt``, src/pthtockpt.py),
also with torch unimportable (the in-process checks are in tests/unit/backbones/test_pthtockpt.py)."""
import os
import stat
import subprocess
import sys

import numpy as np
import torch

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms

from src.backbones.networks import parameter_shapes
from src.backbones.torch_checkpoint import torch_name
from conftest import ROOT, os_system_pickle, random_state_dict, write_zip_checkpoint


def run_python(args, tmp_path, block_torch=False):
    """Run the interpreter from the repo root; ``block_torch`` makes ``import torch`` fail in the child."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if block_torch:
        site = tmp_path / "no_torch_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_refuses_foreign_pickle_with_one_line_and_writes_nothing(tmp_path):
    marker = tmp_path / "was_run"
    path = tmp_path / "evil.pth"
    write_zip_checkpoint(path, os_system_pickle(marker))
    result = run_python(["-m", "src.pthtockpt", "--pth_path", path], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: unexpected pickle content: os.system"
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


def test_script_cli_converts_with_torch_unimportable(tmp_path):
    state = random_state_dict("mobilenet_v2", None, seed=1)
    pth = tmp_path / "mobilenet.pth"
    torch.save({name: torch.from_numpy(value) for name, value in state.items()}, pth)
    blocked = run_python(["-c", "import torch"], tmp_path, block_torch=True)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # the block itself works

    result = run_python(["src/pthtockpt.py", "--pth_path", pth, "--backbone_name", "mobilenet_v2"], tmp_path,
                        block_torch=True)
    assert result.returncode == 0, result.stderr
    assert "dropped 1 entries mobilenet_v2 has no use for, e.g. classifier.1.weight" in result.stderr
    ckpt = tmp_path / "mobilenet.ckpt"  # default: beside the input
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["mobilenet.ckpt", "mobilenet.pth"]
    loaded = ms.load_checkpoint(str(ckpt))
    assert set(loaded) == set(parameter_shapes("mobilenet_v2"))
    for name, param in loaded.items():
        np.testing.assert_array_equal(param.asnumpy(), state[torch_name(name)])
