"""Fold inference-mode BatchNorm into the convolution that feeds it.

With moving statistics, ``bn(conv(x))`` is ``conv'(x)`` with weights ``w * s`` and bias ``beta - mean * s``,
``s = gamma / sqrt(moving_variance + eps)`` per output channel. ``fold_batchnorm`` rewrites a network in
place that way: each folded convolution gets the scaled weights and a bias, and its BatchNorm becomes an
``nn.Identity``. The graph then has one operator where it had two, in MindSpore graph mode as in the
exported MINDIR that the C++ runner executes. The result equals the unfolded network up to float rounding
(the products are formed in float64 and rounded once to float32, so folding is deterministic).

A (convolution, BatchNorm) pair is recognised where the data flow is plain from the cell's structure:
consecutive cells of a ``SequentialCell``, and attributes ``conv<k>`` / ``bn<k>`` of one cell (the
torchvision naming the backbones in ``src/backbones/networks.py`` follow, e.g. ``Bottleneck.conv2`` -> ``bn2``).
"""
import numpy as np

import mindspore as ms
from mindspore import nn


def _fold_pair(conv, bn):
    if bn.training or bn.use_batch_statistics:
        raise ValueError("BatchNorm folding needs inference mode (set_train(False)) with moving statistics")
    if conv.data_format != "NCHW" or bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold BatchNorm({bn.num_features}) into {conv.cls_name}({conv.out_channels}, "
                         f"{conv.data_format})")
    gamma, beta, mean, var = (p.asnumpy().astype(np.float64) for p in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    scale = gamma / np.sqrt(var + float(bn.eps))
    weight = conv.weight.asnumpy().astype(np.float64) * scale[:, None, None, None]
    bias = beta - mean * scale
    conv.weight.set_data(ms.Tensor(weight.astype(np.float32)))
    if conv.has_bias:
        bias = bias + conv.bias.asnumpy().astype(np.float64) * scale
        conv.bias.set_data(ms.Tensor(bias.astype(np.float32)))
    else:
        name = conv.weight.name.rsplit(".", 1)[0] + ".bias" if "." in conv.weight.name else "bias"
        conv.bias = ms.Parameter(ms.Tensor(bias.astype(np.float32)), name=name, requires_grad=False)
        conv.has_bias = True


def _pairs(cell):
    """(conv, BatchNorm cell, how to replace the BatchNorm) for the pairs directly inside ``cell``."""
    children = list(cell.name_cells().items())
    if isinstance(cell, nn.SequentialCell):
        for index in range(1, len(children)):
            conv, bn = children[index - 1][1], children[index][1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                yield conv, bn, (lambda i=index: cell.__setitem__(i, nn.Identity()))
        return
    named = dict(children)
    for name, bn in children:
        conv = named.get("conv" + name[2:]) if name.startswith("bn") else None
        if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
            yield conv, bn, (lambda n=name: setattr(cell, n, nn.Identity()))


def fold_batchnorm(network):
    """Fold every recognised (Conv2d -> BatchNorm2d) pair of ``network`` in place; returns the number folded.

    The network must be in inference mode and not yet run in graph mode: a compiled graph would keep
    running the BatchNorm on top of the scaled weights (an error here if ``network`` itself was compiled;
    a parent cell's compiled graph cannot be seen from here). BatchNorm cells that do not follow a
    convolution in one of the recognised patterns are left as they are.
    """
    if any(getattr(cell, "compile_cache", None) for _, cell in network.cells_and_names()):
        raise ValueError("fold BatchNorm before the network's first graph-mode call (its compiled graph would "
                         "not see the change)")
    folded = 0
    for _, cell in list(network.cells_and_names()):
        for conv, bn, replace in list(_pairs(cell)):
            _fold_pair(conv, bn)
            replace()
            folded += 1
    return folded
