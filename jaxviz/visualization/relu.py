"""Lucid's redirected ReLU gradient, so that a unit silent at the starting image still gets a gradient.

A unit whose ReLU is off for the starting (grey) image has a zero gradient, and the optimizer never
moves: its visualization stays a flat grey image although the unit responds to real images. Lucid
(``lucid.optvis.overrides.redirected_relu_grad``) replaces the ReLU's gradient during the
optimization: where the ordinary gradient of an example is zero everywhere, it lets the gradient
through except where it would push an already negative input lower. The forward pass is unchanged,
so the objective values are the model's own.

Here the substitution happens while the visualization's program is traced: the ReLU that models
look up at call time (``jax.nn.relu``, ``flax.linen.relu``, ``flax.nnx.relu``; the built-in CNN, linen
and nnx models use these) is replaced by ``redirected_relu`` inside ``redirected_relus()``. A model
that computes its ReLU otherwise (``jnp.maximum(x, 0)``, or a ``relu`` imported by name before) keeps
the ordinary gradient.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import flax.linen
import flax.nnx
import jax
import jax.numpy as jnp

__all__ = ["redirected_relu", "redirected_relus"]

_LOCK = threading.Lock()  # the substitution is process-wide: one tracing at a time
_PLACES = ((jax.nn, "relu"), (flax.linen, "relu"), (flax.nnx, "relu"))


@jax.custom_vjp
def redirected_relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)``; its gradient is redirected (see the module docstring)."""
    return jnp.maximum(x, 0)


def _forward(x):
    return redirected_relu(x), x


def _backward(x, g):
    ordinary = jnp.where(x > 0, g, 0)
    # descent moves x by -g: where x < 0 and g > 0 it would push x lower still, so that part is dropped
    redirected = jnp.where((x < 0) & (g > 0), 0, g)
    if x.ndim == 0:
        return (jnp.where(ordinary != 0, ordinary, redirected),)
    per_example = jnp.any(ordinary.reshape(x.shape[0], -1) != 0, axis=1)  # examples the ordinary gradient reaches
    keep = per_example.reshape((-1,) + (1,) * (x.ndim - 1))
    return (jnp.where(keep, ordinary, redirected),)


redirected_relu.defvjp(_forward, _backward)


@contextlib.contextmanager
def redirected_relus() -> Iterator[None]:
    """Inside, the ReLU models look up at call time is ``redirected_relu`` (trace the program here)."""
    with _LOCK:
        saved = [(module, name, getattr(module, name)) for module, name in _PLACES if hasattr(module, name)]
        try:
            for module, name, _ in saved:
                setattr(module, name, redirected_relu)
            yield
        finally:
            for module, name, original in saved:
                setattr(module, name, original)
