"""Layer activations over a dataset, and the top-K images of every unit.

The notebook's feature extractor ``Model(input, get_layer(name).output)``
becomes ``layer_features(model, variables, images, layer=...)``: one jitted
program, run in fixed-size padded batches sharded over all devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.batching import map_batches
from jaxviz.data import check_uint8_images
from jaxviz.model import CNN, check_images_fit, check_layer, uint8_program

__all__ = ["TopK", "activation_maps", "layer_features", "top_k_images", "unit_scores"]

REDUCTIONS = ("mean", "max")


def layer_features(model: CNN, variables: dict, images: np.ndarray, *, layer: str,
                   batch_size: int = 500, progress: bool | str = False) -> np.ndarray:
    """Activations of ``layer`` for every image.

    Args:
      model, variables: the network.
      images: uint8 (N, 32, 32, 3).
      layer: a name from ``model.layer_names()``.
      batch_size: images per compiled call (the last batch is padded).
      progress: show a progress bar.

    Returns:
      float32 (N, *layer_shape), e.g. (N, 512) for ``"fc1"``.
    """
    check_uint8_images(images, "images")
    check_layer(model, layer)
    check_images_fit(model, images)
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got an empty dataset")
    program = uint8_program(model, layer)
    return map_batches(functools.partial(program, variables), images, batch_size=batch_size,
                       progress=progress and (progress if isinstance(progress, str) else f"features {layer}"))


def activation_maps(model: CNN, variables: dict, images: np.ndarray, *, layer: str) -> np.ndarray:
    """Feature maps of a conv (or pool) layer for a few images: float32 (N, h, w, channels)."""
    check_layer(model, layer)
    if not layer.startswith(("conv", "pool")):
        raise ValueError(f"layer: expected a conv or pool layer for activation maps, got {layer!r}")
    return layer_features(model, variables, images, layer=layer)


def unit_scores(features: np.ndarray, *, reduce: str = "mean") -> np.ndarray:
    """One score per (image, unit): features as is for dense layers, or the
    spatial ``"mean"``/``"max"`` of each channel for conv maps (N, h, w, C).

    Returns:
      float32 (N, units).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    features = np.asarray(features, np.float32)
    if features.ndim == 2:
        return features
    if features.ndim != 4:
        raise ValueError(f"features: expected (N, units) or (N, h, w, channels), got shape {features.shape}")
    return features.mean(axis=(1, 2)) if reduce == "mean" else features.max(axis=(1, 2))


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
        raise ValueError(f"scores: expected shape (N, units), got {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("scores: expected at least one image, got an empty dataset")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[0]:
        raise ValueError(f"k: expected an int in [1, {scores.shape[0]}] (the dataset size), got {k!r}")
    values, indices = _top_k(jnp.asarray(scores, jnp.float32), int(k))
    return TopK(np.asarray(indices, np.int64).T, np.asarray(values, np.float32).T)
