"""A small ResNet for 64x64 RGB images and 10 classes, in Flax linen.

``build()`` returns ``(module, variables)`` with weights from a fixed seed and
non-trivial batch-norm statistics, so every layer (batch norm included) matters::

    jaxviz report --model examples/resnet_linen.py:build

Submodules (linen paths, the same strings as the attribute paths of the nnx
twin in ``resnet_nnx.py``): ``stem`` (``conv``, ``bn``; its output is after
the ReLU), ``stage1``..``stage3`` of ``block0``, ``block1`` (``conv1``,
``bn1``, ``conv2``, ``bn2``, and ``proj``, ``proj_bn`` for a projection
shortcut), ``pool`` (global average) and ``head`` (the logits).

Self-contained: imports only jax, flax and numpy (and the standard library).
"""

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SHAPE = (64, 64, 3)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
WIDTHS = (16, 32, 64)
SEED = 0


def random_weight(path: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """The value of the variable at ``path`` (e.g. ``"stage1/block0/bn1/var"``), float32.

    Seeded by (seed, path), so a variable does not depend on the others. Kernels:
    He normal; batch-norm scales U(0.5, 1.5),
    biases and running means N(0, 0.2), running variances U(0.5, 2).
    """
    rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "kernel":
        value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    elif leaf == "scale":
        value = rng.uniform(0.5, 1.5, shape)
    elif leaf == "var":
        value = rng.uniform(0.5, 2.0, shape)
    else:  # bias, mean
        value = rng.normal(0.0, 0.2, shape)
    return value.astype(np.float32)


class ConvBN(nn.Module):
    """3x3 conv (no bias) -> batch norm -> ReLU."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv")(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))


class Block(nn.Module):
    """Residual block: conv1 -> bn1 -> ReLU -> conv2 -> bn2, + shortcut, ReLU."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)

        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), s, padding="SAME", use_bias=False, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv2")(y)
        y = bn("bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:  # 1x1 projection shortcut
            x = bn("proj_bn")(nn.Conv(self.features, (1, 1), s, use_bias=False, name="proj")(x))
        return nn.relu(y + x)


class Stage(nn.Module):
    """Two residual blocks; the first has stride ``strides``."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(self.features, self.strides, name="block0")(x, train)
        return Block(self.features, 1, name="block1")(x, train)


class GlobalAvgPool(nn.Module):
    """(N, H, W, C) -> (N, C)."""

    @nn.compact
    def __call__(self, x):
        return x.mean(axis=(1, 2))


class ResNet(nn.Module):
    """stem -> stage1 (16 ch) -> stage2 (32, /2) -> stage3 (64, /2) -> pool -> head."""

    num_classes: int = 10
    widths: tuple[int, ...] = WIDTHS

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(self.widths[0], name="stem")(x, train)
        for i, width in enumerate(self.widths):
            x = Stage(width, 1 if i == 0 else 2, name=f"stage{i + 1}")(x, train)
        x = GlobalAvgPool(name="pool")(x)
        return nn.Dense(self.num_classes, name="head")(x)


def build(seed: int = SEED):
    """``(module, variables)``: a ``ResNet`` and its ``{"params", "batch_stats"}`` from ``seed``."""
    module = ResNet(num_classes=len(CLASS_NAMES))
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *INPUT_SHAPE), jnp.float32))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    values = [jnp.asarray(random_weight("/".join(k.key for k in path[1:]), leaf.shape, seed))
              for path, leaf in leaves]  # path[0] is the collection
    return module, jax.tree_util.tree_unflatten(treedef, values)
