"""Naive occlusion, kept for tests and benchmarks.

Three straightforward implementations of the same computation as
``jaxviz.occlude``; each returns ``(base, grid)`` with the shapes of
``Occlusion.base`` and ``Occlusion.grid``:

1. ``occlude_notebook``: the teaching notebook's algorithm: every occluded
   copy is built on the host with numpy (positions computed its own way,
   not through ``window_spans``), stacked, then run through ``f`` in batches.
2. ``occlude_position_loop``: a Python loop over positions; each iteration
   occludes the whole image batch on the host and calls the jitted ``f``.
3. ``occlude_pair_loop``: a loop over images and positions, one forward of
   one image each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxviz._batching import map_batches
from jaxviz.engine.occlusion import window_spans

__all__ = ["occlude_notebook", "occlude_pair_loop", "occlude_position_loop"]


def _starts(dim: int, window: int, stride: int, anchor: str) -> list[int]:
    """Window starts, written the way the notebook / Captum compute them."""
    if anchor == "centered":  # notebook: for i in range(st, dim, stride): ims[i-st : i-st+occ]
        st = window // 2
        return [i - st for i in range(st, dim, stride)]
    # Captum: shift_counts = ceil((dim - window) / stride) + 1, shift k starts at k * stride
    return [k * stride for k in range(math.ceil((dim - window) / stride) + 1)]


def _fills(fill: Any, images: np.ndarray) -> np.ndarray:
    """The fill broadcast to (N, H, W, C)."""
    return np.broadcast_to(np.asarray(fill, images.dtype), images.shape)


def _call(f: Callable, params: Any) -> Callable:
    return jax.jit(f if params is None else (lambda x: f(params, x)))


def occlude_notebook(f: Callable, images: np.ndarray, *, window: tuple[int, int], stride: tuple[int, int],
                     fill: Any = 0.0, anchor: str = "centered", params: Any = None,
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's ``occ_images`` + ``extractor.predict``: host copies, then batched forwards."""
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    rows = _starts(images.shape[1], window[0], stride[0], anchor)
    cols = _starts(images.shape[2], window[1], stride[1], anchor)
    stack = [images]
    for r in rows:
        for c in cols:
            occluded = images.copy()
            occluded[:, r:r + window[0], c:c + window[1]] = fills[:, r:r + window[0], c:c + window[1]]
            stack.append(occluded)
    feats = map_batches(_call(f, params), np.concatenate(stack), batch_size=batch_size)
    feats = feats.reshape(len(stack), len(images), *feats.shape[1:])
    grid = feats[0][None] - feats[1:]  # (positions, N, ...): original minus occluded
    grid = np.moveaxis(grid, 0, 1).reshape(len(images), len(rows), len(cols), *feats.shape[2:])
    return feats[0], grid


def occlude_position_loop(f: Callable, images: np.ndarray, *, window: tuple[int, int],
                          stride: tuple[int, int], fill: Any = 0.0, anchor: str = "centered",
                          params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """One jitted forward of the whole image batch per window position."""
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    fn = _call(f, params)
    base = np.asarray(fn(images))
    rows = window_spans(images.shape[1], window[0], stride[0], anchor)
    cols = window_spans(images.shape[2], window[1], stride[1], anchor)
    grid = np.empty((len(images), len(rows), len(cols), *base.shape[1:]), np.float32)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            occluded = images.copy()
            occluded[:, r0:r1, c0:c1] = fills[:, r0:r1, c0:c1]
            grid[:, i, j] = base - np.asarray(fn(occluded))
    return base, grid


def occlude_pair_loop(f: Callable, images: np.ndarray, *, window: tuple[int, int], stride: tuple[int, int],
                      fill: Any = 0.0, anchor: str = "centered",
                      params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """One jitted forward of one image per (image, position) pair."""
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    fn = _call(f, params)
    rows = window_spans(images.shape[1], window[0], stride[0], anchor)
    cols = window_spans(images.shape[2], window[1], stride[1], anchor)
    base, grid = [], []
    for n in range(len(images)):
        b = np.asarray(fn(images[n:n + 1]))[0]
        base.append(b)
        for r0, r1 in rows:
            for c0, c1 in cols:
                occluded = images[n:n + 1].copy()
                occluded[:, r0:r1, c0:c1] = fills[n:n + 1, r0:r1, c0:c1]
                grid.append(b - np.asarray(fn(occluded))[0])
    base = np.stack(base)
    return base, np.stack(grid).reshape(len(images), len(rows), len(cols), *base.shape[1:])
