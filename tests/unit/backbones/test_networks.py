"""Backbones: parity with torch references, taps, seeded init, checkpoint loading (the MobileNetV2 fetch script:
tests/integration/test_mobilenet_weights.py)."""
import logging

import numpy as np
import pytest
import torch

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)
import mindspore as ms
from mindspore import nn

from src.utils.errors import InputError
from src.backbones.networks import (DEFAULT_LAYERS, TAPS, build_backbone, feature_channels, feature_strides,
                       parameter_shapes)
from src.backbones.folding import fold_batchnorm
from src.backbones.torch_checkpoint import convert
from conftest import assert_parity, context_mode
from benchmarks.torch_reference import TorchWideResNet50_2, randomize_batch_norm_stats


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
    folded = build_backbone("wideresnet50", layers, pre_ckpt_path=ckpt)
    assert fold_batchnorm(folded) == 43  # the inference extractor's form, with real BatchNorm statistics
    assert_parity(folded, torch_taps, layers, image)


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


def randomize_batch_norm(net, seed):
    """BatchNorm affine terms and statistics far from the identity (init_random makes them the identity)."""
    rng = np.random.default_rng(seed)
    for param in net.get_parameters():
        kind = param.name.rsplit(".", 1)[-1]
        if kind in ("gamma", "moving_variance"):
            param.set_data(ms.Tensor((rng.random(param.shape) + 0.5).astype(np.float32)))
        elif kind in ("beta", "moving_mean"):
            param.set_data(ms.Tensor((rng.standard_normal(param.shape) * 0.2).astype(np.float32)))


@pytest.mark.parametrize("backbone_name, layers, folds", [("wideresnet50", ["layer2", "layer3"], 43),
                                                          ("mobilenet_v2", ["features.6", "features.13"], 39)])
def test_folded_batchnorm_equals_unfolded(backbone_name, layers, folds):
    image = ms.Tensor(np.random.default_rng(4).standard_normal((2, 3, 96, 96), dtype=np.float32))
    plain = build_backbone(backbone_name, layers, seed=3)
    randomize_batch_norm(plain, seed=5)
    with context_mode(ms.GRAPH_MODE):
        expected = [out.asnumpy() for out in plain(image)]
        runs = []
        for _ in range(2):  # folding is deterministic: the same parameters give identical outputs
            net = build_backbone(backbone_name, layers, seed=3)
            randomize_batch_norm(net, seed=5)
            assert fold_batchnorm(net) == folds
            assert fold_batchnorm(net) == 0  # nothing left to fold
            runs.append([out.asnumpy() for out in net(image)])
    assert not any(isinstance(cell, nn.BatchNorm2d) for _, cell in net.cells_and_names())
    assert all(p.name.rsplit(".", 1)[-1] in ("weight", "bias") for p in net.get_parameters())
    for layer, want, got, again in zip(layers, expected, *runs):
        assert np.array_equal(got, again), layer
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max()), layer


def test_folding_needs_inference_mode_and_an_uncompiled_network():
    net = build_backbone("mobilenet_v2", ["features.1"], seed=0)
    net.set_train(True)
    with pytest.raises(ValueError, match="inference mode"):
        fold_batchnorm(net)
    net.set_train(False)
    with context_mode(ms.GRAPH_MODE):
        net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="first graph-mode call"):
        fold_batchnorm(net)


class RecordList(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def patchcore_log():
    """Records of the "patchcore" logger, whether or not a CLI made it stop propagating."""
    logger, handler = logging.getLogger("patchcore"), RecordList()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


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
    patchcore_log.records.clear()
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
    with pytest.raises(InputError,
                       match=r"wrong shape: features.0.0.weight \(16, 3, 3, 3\) \(expected \(32, 3, 3, 3\)"):
        build_backbone("mobilenet_v2", ["features.3"], pre_ckpt_path=reshaped)


@pytest.mark.parametrize("name, layers, message", [
    ("resnet18", ["layer2"], r"backbone_name: unknown backbone 'resnet18' \(known: wideresnet50, mobilenet_v2"),
    ("wideresnet50", ["layer2", "layer5"], r"unknown layer of wideresnet50 'layer5' \(known: layer1"),
    ("mobilenet_v2", ["layer2"], r"unknown layer of mobilenet_v2 'layer2' \(known: features.0"),
    ("mobilenet_v2", [], r"empty"),
    ("mobilenet_v2", ["features.6", "features.6"], r"twice"),
])
def test_bad_names_are_input_errors(name, layers, message):
    with pytest.raises(InputError, match=message):
        build_backbone(name, layers)
    with pytest.raises(InputError, match=message):
        feature_channels(name, layers)
