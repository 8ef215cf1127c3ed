"""The ResNet of ``resnet_linen.py`` in Flax nnx: the same architecture and layer names.

``build()`` returns the module in eval mode, initialised by nnx from
``nnx.Rngs(seed)`` (He-normal conv kernels) with random batch-norm scales,
biases and running statistics, so that every layer (batch norm included)
matters. Attribute paths are the linen submodule paths (``stem/conv``,
``stage2/block0/proj``, ``head``...), so the linen twin's variables can be
copied in (linen's ``params`` and ``batch_stats`` merged into
``nnx.to_pure_dict(nnx.state(model))``; BatchNorm's ``mean`` and ``var`` live
under ``batch_stats`` in linen) and both then compute the same activations::

    jaxviz report --model examples/resnet_nnx.py:build

Self-contained: imports only jax and flax (and the standard library).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INPUT_SHAPE = (64, 64, 3)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
WIDTHS = (16, 32, 64)
SEED = 0


def _uniform(low: float, high: float):
    """An initialiser drawing U(low, high)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init


def _conv(cin, cout, size, strides, rngs):
    return nnx.Conv(cin, cout, (size, size), strides=strides, padding="SAME", use_bias=False,
                    kernel_init=nnx.initializers.he_normal(), rngs=rngs)


def _bn(features, rngs):
    return nnx.BatchNorm(features, momentum=0.9, scale_init=_uniform(0.5, 1.5),
                         bias_init=nnx.initializers.normal(0.2), rngs=rngs)


class ConvBN(nnx.Module):
    """3x3 conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 3, 1, rngs)
        self.bn = _bn(cout, rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class Block(nnx.Module):
    """Residual block: conv1 -> bn1 -> ReLU -> conv2 -> bn2, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, strides: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, strides, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.project = strides != 1 or cin != cout
        if self.project:  # 1x1 projection shortcut
            self.proj = _conv(cin, cout, 1, strides, rngs)
            self.proj_bn = _bn(cout, rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.project:
            x = self.proj_bn(self.proj(x))
        return nnx.relu(y + x)


class Stage(nnx.Module):
    """Two residual blocks; the first has stride ``strides``."""

    def __init__(self, cin: int, cout: int, strides: int, *, rngs: nnx.Rngs):
        self.block0 = Block(cin, cout, strides, rngs=rngs)
        self.block1 = Block(cout, cout, 1, rngs=rngs)

    def __call__(self, x):
        return self.block1(self.block0(x))


class GlobalAvgPool(nnx.Module):
    """(N, H, W, C) -> (N, C)."""

    def __call__(self, x):
        return x.mean(axis=(1, 2))


class ResNet(nnx.Module):
    """stem -> stage1 (16 ch) -> stage2 (32, /2) -> stage3 (64, /2) -> pool -> head."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = WIDTHS, channels: int = 3, *,
                 rngs: nnx.Rngs):
        self.stem = ConvBN(channels, widths[0], rngs=rngs)
        self.stage1 = Stage(widths[0], widths[0], 1, rngs=rngs)
        self.stage2 = Stage(widths[0], widths[1], 2, rngs=rngs)
        self.stage3 = Stage(widths[1], widths[2], 2, rngs=rngs)
        self.pool = GlobalAvgPool()
        self.head = nnx.Linear(widths[2], num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.pool(x))


def build(seed: int = SEED) -> ResNet:
    """A ``ResNet`` in eval mode, its weights drawn from ``nnx.Rngs(seed)``.

    Fresh batch norms have zero running means and unit variances, which would
    make them near no-ops in eval mode: their statistics are drawn too
    (means N(0, 0.2), variances U(0.5, 2)).
    """
    rngs = nnx.Rngs(seed)
    model = ResNet(len(CLASS_NAMES), rngs=rngs)
    for _, bn in nnx.iter_modules(model):
        if isinstance(bn, nnx.BatchNorm):
            bn.mean.set_value(0.2 * jax.random.normal(rngs(), bn.mean.get_value().shape))
            bn.var.set_value(jax.random.uniform(rngs(), bn.var.get_value().shape, minval=0.5, maxval=2.0))
    model.eval()
    return model
