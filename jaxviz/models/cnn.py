"""The jaxviz CNN: a VGG-style Flax network whose every layer has a name.

The architecture follows the teaching notebook's Keras model: stacked 3x3
convolution blocks with max pooling, one fully connected hidden layer and a
linear classifier. Each convolution is followed by batch normalization and a
ReLU; the name of a conv layer refers to that whole unit, so ``"conv1"``'s
activations are post-ReLU, as Keras' ``Conv2D(activation="relu")`` would give.

The numerics are pure functions of ``(variables, x)``::

    model = CNN()
    variables = init_variables(model, jax.random.key(0))
    feats = forward(model, variables, x, layer="fc1")   # (N, 512)

``forward`` stops at the named layer: later layers are neither traced nor
computed, which is the notebook's ``Model(input, get_layer(name).output)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError

__all__ = ["CNN", "CNNLayer", "IMAGE_SHAPE", "check_layer", "forward", "forward_perturbed", "init_variables", "layers"]

Variables = Any  # a Flax variables dict: {"params": ..., "batch_stats": ...}

IMAGE_SHAPE = (32, 32, 3)


class CNN(nn.Module):
    """VGG-style CNN for 32x32 RGB images.

    Attributes:
      widths: channels of each conv block; each block has ``convs_per_block``
        3x3 convs (conv -> batch norm -> ReLU) followed by 2x2 max pooling.
      convs_per_block: convolutions per block.
      hidden: units of the fully connected hidden layer ``fc1``.
      num_classes: outputs of the classifier ``logits``.
      dropout: dropout rate before ``fc1`` and before ``logits`` (training only).
    """

    widths: Sequence[int] = (32, 64, 128)
    convs_per_block: int = 2
    hidden: int = 512
    num_classes: int = 10
    dropout: float = 0.3

    def layer_names(self) -> tuple[str, ...]:
        """All layer names in forward order."""
        names: list[str] = []
        conv = 0
        for block in range(len(self.widths)):
            for _ in range(self.convs_per_block):
                conv += 1
                names.append(f"conv{conv}")
            names.append(f"pool{block + 1}")
        names += ["flatten", "fc1", "logits"]
        return tuple(names)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, stop_at: str | None = None,
                 perturb: tuple[str, jax.Array] | None = None) -> jax.Array:
        """Forward pass.

        Args:
          x: float32 images, shape (N, 32, 32, 3), as made by ``from_cnn(...).to_input`` (pixels / 255).
          train: use batch statistics and dropout (needs a ``"dropout"`` rng).
          stop_at: return this layer's output instead of the logits.
          perturb: ``(layer, delta)``: add ``delta`` to that layer's activations (which are
            sown, before the addition, as ``intermediates/perturbed``); see ``forward_perturbed``.

        Returns:
          The activations of ``stop_at`` (default: logits, shape (N, num_classes)).
        """

        def at(name: str, x: jax.Array) -> jax.Array:
            if perturb is not None and perturb[0] == name:
                self.sow("intermediates", "perturbed", x)
                x = x + perturb[1]
            return x

        conv = 0
        for block, width in enumerate(self.widths):
            for _ in range(self.convs_per_block):
                conv += 1
                name = f"conv{conv}"
                x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, name=name)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(x)
                x = at(name, nn.relu(x))
                if stop_at == name:
                    return x
            x = at(f"pool{block + 1}", nn.max_pool(x, (2, 2), strides=(2, 2)))
            if stop_at == f"pool{block + 1}":
                return x
        x = at("flatten", x.reshape((x.shape[0], -1)))
        if stop_at == "flatten":
            return x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = at("fc1", nn.relu(nn.Dense(self.hidden, name="fc1")(x)))
        if stop_at == "fc1":
            return x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return at("logits", nn.Dense(self.num_classes, name="logits")(x))


def check_layer(model: CNN, layer: str | None) -> None:
    """Raise ``ValueError`` naming the valid layers if ``layer`` is unknown."""
    if layer is None:
        return
    if not isinstance(layer, str):
        raise ArgumentTypeError("layer", f"expected a layer name (str), got {type(layer).__name__}")
    names = model.layer_names()
    if layer not in names:
        raise ArgumentError("layer", f"unknown layer {layer!r}; expected one of {', '.join(names)}")


def init_variables(model: CNN, key: jax.Array) -> Variables:
    """Fresh variables ``{"params", "batch_stats"}`` for ``model``."""
    x = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    return model.init({"params": key}, x, train=False)


def forward(model: CNN, variables: Variables, x: jax.Array, *, layer: str | None = None) -> jax.Array:
    """Inference forward pass stopped at ``layer``: a pure function of ``(variables, x)``.

    Args:
      model: the module (static).
      variables: ``{"params", "batch_stats"}``.
      x: float32 (N, 32, 32, 3) model input (pixels / 255, see ``Network.to_input``).
      layer: a name from ``model.layer_names()``; ``None`` means the logits.

    Returns:
      The layer's activations, shape (N, ...) as given by ``layers``.

    Raises:
      ValueError: ``layer`` is not one of ``model.layer_names()``.
    """
    check_layer(model, layer)
    return model.apply(variables, x, train=False, stop_at=layer)


def forward_perturbed(model: CNN, variables: Variables, x: jax.Array, layer: str, delta: jax.Array,
                      output_layer: str | None = None) -> tuple[jax.Array, jax.Array]:
    """``forward`` to ``output_layer`` with ``delta`` added to ``layer``'s activations.

    Returns:
      ``(activations of layer (before adding delta), activations of output_layer)``; the gradient
      of the second with respect to ``delta`` at 0 is its gradient with respect to the first.
    """
    check_layer(model, layer)
    check_layer(model, output_layer)
    out, state = model.apply(variables, x, train=False, stop_at=output_layer, perturb=(layer, delta),
                             mutable=["intermediates"])
    return state["intermediates"]["perturbed"][0], out


@dataclasses.dataclass(frozen=True)
class CNNLayer:
    """One row of ``layers``: a layer's kind, output shape and parameter count."""

    name: str
    kind: str
    output_shape: tuple[int, ...]  # without the batch axis
    params: int


def _count(tree: Any) -> int:
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def layers(model: CNN, variables: Variables | None = None) -> list[CNNLayer]:
    """Keras-style summary: one ``CNNLayer`` per named layer (``Network.summary`` shows it).

    Parameter counts include the layer's batch-norm scale/bias (trainable) and
    running statistics (non-trainable), as Keras counts them.
    """
    if variables is None:
        variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.float32)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    rows = []
    for name in model.layer_names():
        out = jax.eval_shape(lambda v, x, name=name: forward(model, v, x, layer=name), variables, x)
        count = _count(params.get(name, {})) + _count(params.get(f"{name}_bn", {}))
        count += _count(stats.get(f"{name}_bn", {}))
        kind = "".join(c for c in name if not c.isdigit())
        kind = {"conv": "Conv3x3+BN+ReLU", "pool": "MaxPool2x2", "fc": "Dense+ReLU",
                "logits": "Dense", "flatten": "Flatten"}.get(kind, kind)
        rows.append(CNNLayer(name, kind, tuple(out.shape[1:]), count))
    return rows
