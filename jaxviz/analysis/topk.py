"""Unit scores and the top-K images of every unit (the notebook's ``idxs_top10``)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError

__all__ = ["TopK", "top_k_images", "unit_scores"]

REDUCTIONS = ("mean", "max")


def unit_scores(features: np.ndarray, *, reduce: str = "mean") -> np.ndarray:
    """One score per (image, unit): features as is for dense layers, or the
    ``"mean"``/``"max"`` of each channel (the last axis) over the others, e.g.
    over (h, w) for conv maps (N, h, w, C).

    Returns:
      float32 (N, units).
    """
    if reduce not in REDUCTIONS:
        raise ArgumentError("reduce", f"expected one of {REDUCTIONS}, got {reduce!r}")
    features = np.asarray(features, np.float32)
    if features.ndim == 2:
        return features
    if features.ndim < 2:
        raise ArgumentError("features", f"expected (N, units), (N, h, w, channels) or (N, ..., units), "
                         f"got shape {features.shape}")
    axes = tuple(range(1, features.ndim - 1))  # (h, w) for conv maps; every axis between batch and units
    return features.mean(axis=axes) if reduce == "mean" else features.max(axis=axes)


@dataclasses.dataclass(frozen=True)
class TopK:
    """The K highest-scoring images of every unit.

    Attributes:
      indices: int64 (K, units): dataset indices, best first (the notebook's
        ``idxs_top10``); ties go to the lower dataset index.
      values: float32 (K, units): the scores.
    """

    indices: np.ndarray
    values: np.ndarray


@functools.partial(jax.jit, static_argnames="k")
def _top_k(scores: jax.Array, k: int):
    # lax.top_k runs along the last axis; put the dataset axis there.
    return jax.lax.top_k(scores.T, k)


def top_k_images(scores: np.ndarray, k: int) -> TopK:
    """For every unit, the ``k`` images with the highest score.

    Uses ``jax.lax.top_k`` (a partial selection, no full sort). Equal
    scores are ordered by ascending dataset index, like a stable descending
    sort.

    Args:
      scores: float (N, units), e.g. from ``unit_scores``.
      k: 1 <= k <= N.

    Returns:
      ``TopK`` with (k, units) indices and values.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ArgumentError("scores", f"expected shape (N, units), got {scores.shape}")
    if scores.shape[0] == 0:
        raise ArgumentError("scores", "expected at least one image, got an empty dataset")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[0]:
        raise ArgumentError("k", f"expected an int in [1, {scores.shape[0]}] (the dataset size), got {k!r}")
    values, indices = _top_k(jnp.asarray(scores, jnp.float32), int(k))
    return TopK(np.asarray(indices, np.int64).T, np.asarray(values, np.float32).T)
