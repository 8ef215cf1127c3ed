"""What feature visualization maximizes: a unit's activation, read from one image's activation at a layer.

An objective is ``value(activation, index) -> ()`` for one image's activation at the layer
((H, W, C) for a layer with spatial maps, (C,) for a dense one) and one index among the objective's
targets (a unit, or a direction):

- ``"channel"``: the unit's map averaged over space (a dense unit: the unit itself);
- ``"neuron"``: the unit at the centre position (row ``H // 2``, column ``W // 2``);
- a direction ``(C,)`` or several ``(D, C)``: the activation's projection on it, averaged over space;
- a callable ``f(activation) -> ()``: any scalar of the activation (one target).

The penalties and the diversity term are on the images (``penalties``) and on the batch of one unit's
activations (``diversity``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError

__all__ = ["OBJECTIVES", "Objective", "check_objective", "diversity", "penalties"]

OBJECTIVES = ("channel", "neuron")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A checked objective.

    Attributes:
      kind: ``"channel"``, ``"neuron"``, ``"direction"`` or ``"callable"``.
      targets: how many there are: units of the layer, directions, or 1 for a callable.
      directions: float32 (D, C) for ``"direction"``, else None; an argument of the compiled program, so it is
        left out of the objective's equality and hash (the program's cache key).
      fn: the callable, else None.
    """

    kind: str
    targets: int
    directions: np.ndarray | None = dataclasses.field(default=None, compare=False)  # not part of the cache key
    fn: Callable | None = None

    def value(self, activation: jax.Array, index: jax.Array, directions: jax.Array | None) -> jax.Array:
        """One image's objective for target ``index`` (traced int32)."""
        if self.kind == "callable":
            return jnp.asarray(self.fn(activation), jnp.float32).reshape(())
        flat = activation.reshape(-1, activation.shape[-1])  # (positions, C)
        if self.kind == "direction":
            return jnp.mean(flat @ directions[index])
        if self.kind == "neuron" and activation.ndim == 3:
            h, w = activation.shape[:2]
            return activation[h // 2, w // 2, index]
        return jnp.mean(flat[:, index])


def check_objective(objective: Any, layer: str, shape: tuple[int, ...]) -> Objective:
    """``objective`` for a layer of activation ``shape`` (without the batch axis); errors name ``objective``."""
    if len(shape) not in (1, 3):
        raise ArgumentError("layer", f"expected a layer with (H, W, C) maps or (C,) units, got {layer!r} of shape "
                                     f"{shape}")
    channels = shape[-1]
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ArgumentError("objective", f"expected one of {', '.join(OBJECTIVES)}, a direction (C,) or (D, C) "
                                             f"or a callable, got {objective!r}")
        return Objective(objective, channels)
    if callable(objective):
        return Objective("callable", 1, fn=objective)
    if isinstance(objective, (np.ndarray, jax.Array, list, tuple)):
        directions = np.asarray(objective, np.float32)
        if directions.ndim == 1:
            directions = directions[None]
        if directions.ndim != 2 or directions.shape[1] != channels or not len(directions):
            raise ArgumentError("objective", f"expected a direction of {channels} values (the channels of {layer}) "
                                             f"or (D, {channels}), got shape {np.shape(objective)}")
        if not np.isfinite(directions).all():
            raise ArgumentError("objective", "expected finite directions, got NaN or infinite values")
        return Objective("direction", len(directions), directions=directions)
    raise ArgumentTypeError("objective", f"expected one of {', '.join(OBJECTIVES)}, a direction or a callable, got "
                                         f"{type(objective).__name__}")


def penalties(image: jax.Array, *, l1: float, l2: float, tv: float) -> jax.Array:
    """``l1 * sum|image - 0.5| + l2 * sum(image ** 2) + tv * total variation`` of one image (H, W, C): the penalties
    subtracted from the objective (L1 about grey, Lucid's; L2 about 0, so that a linear objective ``w . x``
    with ``l2`` alone is maximized at ``w / (2 l2)``)."""
    total = jnp.zeros((), jnp.float32)
    if l1:
        total = total + l1 * jnp.sum(jnp.abs(image - 0.5))
    if l2:
        total = total + l2 * jnp.sum(image * image)
    if tv:
        total = total + tv * (jnp.sum(jnp.abs(jnp.diff(image, axis=0))) + jnp.sum(jnp.abs(jnp.diff(image, axis=1))))
    return total


def diversity(activations: jax.Array) -> jax.Array:
    """Lucid's diversity of one unit's images: the mean over images of the summed cosine similarity of its Gram
    matrix with the others' (activations (B, ..., C)); lower is more diverse, so it is subtracted, weighted."""
    b, c = activations.shape[0], activations.shape[-1]
    flat = activations.reshape(b, -1, c)
    grams = jnp.einsum("bpc,bpd->bcd", flat, flat).reshape(b, -1)
    grams = grams / jnp.maximum(jnp.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
    similarity = grams @ grams.T
    return (jnp.sum(similarity) - jnp.trace(similarity)) / b
