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

Naive perturbation methods (RISE, feature ablation, deletion / insertion
curves, MuFidelity), the obvious Python loops: one jitted forward of the
whole image batch per mask (or per step, segment, subset), the perturbed
batch built on the host with numpy as ``x * (1 - m) + fill * m`` (m = 1 where
filled), outputs accumulated on the host. Each returns what the matching
jaxviz function computes, for a numeric ``fill``:

4. ``rise_mask_loop``: ``(base, maps)`` as ``Rise.base`` / ``Rise.maps``, for given keep masks.
5. ``ablation_segment_loop``: ``(base, scores)`` as ``Ablation.base`` / ``Ablation.scores``.
6. ``curve_step_loop``: ``curve`` as ``Curve.curve`` with ``targets=None``.
7. ``mufidelity_subset_loop``: ``(base, drops)`` as ``MuFidelity`` (``drops`` with ``targets=None``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxviz._batching import map_batches
from jaxviz.methods.occlusion import window_spans

__all__ = ["ablation_segment_loop", "curve_step_loop", "mufidelity_subset_loop", "occlude_notebook",
           "occlude_pair_loop", "occlude_position_loop", "rise_mask_loop"]


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


# --------------------------------------------------------------------------- perturbation loops


@functools.lru_cache(maxsize=64)
def _jit(f: Callable) -> Callable:
    """``jax.jit(f)``, one object per ``f``, so repeated loops reuse the compiled program."""
    return jax.jit(f)


def _runner(f: Callable, params: Any) -> Callable:
    """``x -> np.ndarray f(x)`` (or ``f(params, x)``) through a cached jit; params passed as an argument."""
    fn = _jit(f)
    return (lambda x: np.asarray(fn(x))) if params is None else (lambda x: np.asarray(fn(params, x)))


def _perturb(images: np.ndarray, fills: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """``images * (1 - m) + fills * m`` for m (N or 1, H, W) in [0, 1], 1 = filled."""
    m = np.asarray(filled, np.float32)[..., None]
    return images * (1 - m) + fills * m


def rise_mask_loop(f: Callable, images: np.ndarray, masks: np.ndarray, *, p: float | None = None,
                   fill: Any = 0.0, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """RISE with the given keep masks (M, H, W), 1 = kept: one forward of the image batch per mask.

    ``maps[n, y, x] = sum_i f(x_n kept by M_i) * M_i[y, x] / (M * p)``; ``p`` defaults to the
    masks' mean (as ``jaxviz.rise(masks=...)``); pass the keep probability to match random masks.
    """
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    fills = _fills(fill, images)
    run = _runner(f, params)
    base = run(images)
    n, h, w = images.shape[:3]
    sums = np.zeros((n, h, w, int(np.prod(base.shape[1:]))), np.float32)
    for keep in masks:
        out = run(_perturb(images, fills, (1 - keep)[None]))
        sums += out.reshape(n, 1, 1, -1) * keep[None, :, :, None]
    p = float(masks.mean(dtype=np.float64)) if p is None else p
    return base, (sums / np.float32(len(masks) * p)).reshape(n, h, w, *base.shape[1:])


def ablation_segment_loop(f: Callable, images: np.ndarray, segments: np.ndarray, *, fill: Any = 0.0,
                          params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature ablation: one forward of the image batch per segment label ``0 .. S - 1``.

    ``segments``: int (H, W) shared, or (N, H, W). ``scores[n, s] = f(x)[n] - f(x without segment s)[n]``.
    """
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    labels = np.asarray(segments)
    labels = labels[None] if labels.ndim == 2 else labels
    run = _runner(f, params)
    base = run(images)
    scores = [base - run(_perturb(images, fills, labels == s)) for s in range(int(labels.max()) + 1)]
    return base, np.stack(scores, axis=1)


def curve_step_loop(f: Callable, images: np.ndarray, attribution: np.ndarray, *, mode: str = "deletion",
                    steps: int = 100, fill: Any = 0.0, params: Any = None) -> np.ndarray:
    """Deletion / insertion curve: one forward of the image batch per step, (N, steps + 1, *out).

    Pixels ranked by attribution (N, H, W), descending, ties to the lower flat index; step k fills
    (deletion) or reveals (insertion) the first ``round_half_up(k * H * W / steps)`` pixels.
    """
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    n, h, w = images.shape[:3]
    order = np.argsort(-np.asarray(attribution, np.float64).reshape(n, -1), axis=1, kind="stable")
    ranks = np.empty((n, h * w), np.int64)
    ranks[np.arange(n)[:, None], order] = np.arange(h * w)[None]
    ranks = ranks.reshape(n, h, w)
    run = _runner(f, params)
    curve = []
    for k in range(steps + 1):
        count = (2 * k * h * w + steps) // (2 * steps)
        filled = ranks >= count if mode == "insertion" else ranks < count
        curve.append(run(_perturb(images, fills, filled)))
    return np.stack(curve, axis=1)


def mufidelity_subset_loop(f: Callable, images: np.ndarray, subsets: np.ndarray, *, grid: int, fill: Any = 0.0,
                           params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """MuFidelity's drops: one forward of the image batch per subset of lattice cells.

    ``subsets``: bool (S, grid * grid); pixel (y, x) is in cell ``(y * grid // H) * grid + x * grid // W``.
    Returns ``(base, drops)`` with ``drops[n, s] = f(x)[n] - f(x with subset s filled)[n]``.
    """
    images = np.asarray(images, np.float32)
    fills = _fills(fill, images)
    h, w = images.shape[1:3]
    cells = (np.arange(h) * grid // h)[:, None] * grid + (np.arange(w) * grid // w)[None, :]
    run = _runner(f, params)
    base = run(images)
    drops = [base - run(_perturb(images, fills, np.asarray(subset, bool)[cells][None])) for subset in subsets]
    return base, np.stack(drops, axis=1)
