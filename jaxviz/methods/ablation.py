"""Feature ablation over segments: how much ``f`` drops when each segment of an image is removed.

``segments`` labels every pixel with its segment, ``0 .. S - 1``; the score of
segment ``s`` of image ``n`` is::

    scores[n, s] = f(x)[n] - f(x with the pixels of segment s replaced by fill)[n]

Captum's ``FeatureAblation(f).attribute(x, feature_mask=segments, baselines=fill)``
semantics and sign: positive where removing the segment *lowers* the output.
``maps`` spreads the scores back to the pixels (each pixel gets its segment's
score), which is Captum's attribution. One segment map can serve every image
(H, W), or each image has its own (N, H, W).

Each (image, segment) pair is one mask, ``labels[image] == segment``, made on
the device from the int32 label maps (the engine's ``perturbed_outputs``), so
no (pairs, H, W) array is ever built and a second call with new images or new
maps of the same shape and segment count reuses the compiled program.

Per-image maps may have different numbers of segments (SLIC does not give
exactly ``n_segments``): every map must use all of its labels ``0 .. S_n - 1``,
``S`` is the largest ``S_n``, and the scores of the labels ``S_n .. S - 1`` that
image ``n`` lacks are exactly 0 (their masks are empty; the pairs still run,
since every chunk has one shape).

Segmentations: ``grid_segments`` (a regular grid, no dependency) and
``slic_segments`` (superpixels from scikit-image, an optional dependency).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, check_int, check_pair
from jaxviz.data.images import check_uint8_images
from jaxviz.engine.inputs import check_x
from jaxviz.engine.perturb import BLUR_SIGMA, MaskFamily, perturbed_outputs, prepare
from jaxviz.methods.base import Attribution, Explained, Method, RunFamily, option, select_targets
from jaxviz.methods.occlusion import FILL_HELP

__all__ = ["METHOD", "Ablation", "AblationOptions", "feature_ablation", "grid_segments", "segment_generator", "segment_labels", "slic_segments"]


@dataclasses.dataclass(frozen=True)
class Ablation:
    """The result of ``feature_ablation``.

    Attributes:
      scores: float32 (N, S, *out): ``f(x) - f(x without segment s)``; 0 for
        labels an image's map lacks.
      base: f on the unperturbed images, (N, *out).
      segments: int32 label map(s) used, (H, W) shared or (N, H, W) per image.
      counts: int (N,): segments of each image's map (``S_n``).
      units: the kept indices of f's last output axis (``None``: all).
      chunk_size: (image, segment) pairs per compiled call in this run.
    """

    scores: np.ndarray
    base: np.ndarray
    segments: np.ndarray
    counts: np.ndarray
    units: tuple[int, ...] | None = None
    chunk_size: int | None = None

    @functools.cached_property
    def maps(self) -> np.ndarray:
        """float32 (N, H, W, *out): every pixel gets its segment's score (computed once, on first use)."""
        n = self.scores.shape[0]
        labels = self.segments if self.segments.ndim == 3 else np.broadcast_to(self.segments, (n, *self.segments.shape))
        return self.scores[np.arange(n)[:, None, None], labels]

    def pixel_map(self, targets: Any = None) -> np.ndarray:
        """``maps``, or with ``targets`` (int (N,): outputs of f, among the kept ``units``) each image's map of
        its target, (N, H, W)."""
        return self.maps if targets is None else select_targets(self.maps, targets, self.units)


# --------------------------------------------------------------------------- masks on the device


def _segment_mask(labels: jax.Array, image: jax.Array, index: jax.Array, *, per_image: bool) -> jax.Array:
    """1 on the pixels of segment ``index`` of image ``image`` (of the shared map unless ``per_image``)."""
    return (labels[image if per_image else 0] == index).astype(jnp.float32)


@functools.lru_cache(maxsize=4)
def segment_generator(per_image: bool) -> Callable:
    return functools.partial(_segment_mask, per_image=per_image)


# --------------------------------------------------------------------------- checks


def _check_segments(segments: Any, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The label maps as int32 (H, W) or (N, H, W), and the segment count of every image (N,)."""
    expected = f"int labels of shape ({h}, {w}) or ({n}, {h}, {w})"
    if not hasattr(segments, "shape") and not isinstance(segments, (list, tuple)):
        raise ArgumentTypeError("segments", f"expected {expected}, got {type(segments).__name__}")
    arr = np.asarray(segments)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ArgumentError("segments", "contains NaN or infinite values")
    if arr.dtype.kind not in "iu":
        raise ArgumentTypeError("segments", f"expected {expected}, got dtype {arr.dtype}")
    if arr.shape not in ((h, w), (n, h, w)):
        raise ArgumentError("segments", f"expected {expected} (the images' size), got shape {arr.shape}")
    maps = arr.reshape(-1, h * w)
    if arr.size and arr.min() < 0:
        raise ArgumentError("segments", f"expected labels 0 .. S - 1, got a negative label {arr.min()}")
    if arr.max() >= h * w:
        raise ArgumentError("segments", f"more labels than pixels: label {arr.max()} in an image of {h * w} pixels "
                         f"(expected labels 0 .. S - 1 with S <= {h * w})")
    maps = maps.astype(np.int64)
    counts = maps.max(axis=1) + 1
    size = int(counts.max())
    present = np.zeros((len(maps), size), bool)
    present[np.arange(len(maps))[:, None], maps] = True
    gaps = present.sum(axis=1) < counts
    if gaps.any():
        k = int(np.flatnonzero(gaps)[0])
        missing = np.flatnonzero(~present[k, :counts[k]])
        which = f"map {k}" if arr.ndim == 3 else "the map"
        raise ArgumentError("segments", f"expected every label 0 .. S - 1 to be present; {which} has labels up to "
                         f"{counts[k] - 1} but lacks {missing[:10].tolist()} (relabel it consecutively, e.g. with "
                         f"np.unique(segments, return_inverse=True))")
    counts = np.broadcast_to(counts, (n,)).copy()
    return arr.astype(np.int32), counts


# --------------------------------------------------------------------------- segmentations


def grid_segments(height: int, width: int, *, cells: int | tuple[int, int]) -> np.ndarray:
    """A regular grid of ``cells x cells`` segments (or ``(rows, cols)``), numbered row-major.

    Pixel ``(y, x)`` is in segment ``(y * rows // height) * cols + x * cols // width``
    (cells differ by at most one pixel when the size does not divide).

    Returns:
      int32 (height, width) labels ``0 .. rows * cols - 1``.
    """
    h, w = check_int(height, "height", 1), check_int(width, "width", 1)
    rows, cols = check_pair(cells, "cells")
    if not (1 <= rows <= h and 1 <= cols <= w):
        raise ArgumentError("cells", f"expected 1 <= cells <= ({h}, {w}) per axis, got {(rows, cols)}")
    r = np.arange(h) * rows // h
    c = np.arange(w) * cols // w
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def segment_labels(segments: Any, height: int, width: int) -> Any:
    """``segments`` as ``feature_ablation`` takes it: an int ``k`` is ``grid_segments(height, width, cells=k)``
    (a ``k x k`` grid; errors name ``segments``), anything else is returned as it is (label maps)."""
    if not isinstance(segments, (int, np.integer)) or isinstance(segments, (bool, np.bool_)):
        return segments
    try:
        return grid_segments(height, width, cells=int(segments))
    except ArgumentError as e:
        raise ArgumentError("segments", f"a grid of {e.message}") from None


def slic_segments(images_uint8: np.ndarray, *, n_segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels of every image (scikit-image's ``skimage.segmentation.slic``).

    Args:
      images_uint8: uint8 (N, H, W, C) pixels.
      n_segments: the approximate number of segments per image (SLIC may give fewer or more).
      compactness: SLIC's balance of colour and space (higher: squarer segments).

    Returns:
      int32 (N, H, W), each map relabelled to consecutive labels ``0 .. S_n - 1``.

    Raises:
      ImportError: scikit-image is not installed.
    """
    check_uint8_images(images_uint8, "images_uint8")
    n_segments = check_int(n_segments, "n_segments", 1)
    if isinstance(compactness, (bool, np.bool_)) or not isinstance(compactness, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError("compactness", f"expected a positive number, got {compactness!r}")
    if not 0 < compactness < np.inf:
        raise ArgumentError("compactness", f"expected a positive number, got {compactness!r}")
    try:
        from skimage.segmentation import slic
    except ImportError as e:
        raise ImportError("slic_segments needs scikit-image: pip install scikit-image "
                          "(or pip install jaxviz[slic])") from e
    out = np.empty(images_uint8.shape[:3], np.int32)
    for i, image in enumerate(images_uint8):
        labels = slic(image, n_segments=n_segments, compactness=float(compactness), start_label=0,
                      channel_axis=-1)
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out


# --------------------------------------------------------------------------- entry point


def feature_ablation(
    f: Callable,
    x: Any,
    *,
    segments: Any,
    fill: Any = 0.0,
    params: Any = None,
    units: Sequence[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> Ablation:
    """Feature ablation of ``f`` over the segments of every image (see the module docstring).

    Args:
      f: a pure JAX function ``f(x) -> (N, *out)``, or ``f(params, x)`` when
        ``params`` is given, as in ``occlude``.
      x: float (N, H, W, C), in the space ``f`` expects.
      segments: int labels ``0 .. S - 1``, every one present: (H, W) for all
        images, or (N, H, W), one map per image (counts may differ); or an int
        ``k``: a ``k x k`` grid (``grid_segments``). See ``grid_segments`` and
        ``slic_segments``.
      fill: what replaces a removed segment, as in ``occlude``: a number,
        per-channel (C,), (H, W, C) or per-image (N, H, W, C) values, or
        ``"blur"`` (Gaussian blur, sigma 3 pixels).
      params: optional first argument of ``f``.
      units: indices (or a boolean mask) of f's last output axis to keep (default all).
      chunk_size, memory_budget, devices: as in ``occlude`` (pairs are (image, segment)).
      progress: show a progress bar.

    Returns:
      ``Ablation`` with ``scores`` (N, S, *out), ``maps`` (N, H, W, *out) and
      ``base`` (N, *out), out's last axis cut to ``units``.

    Raises:
      TypeError / ValueError naming the argument, before anything is compiled.
    """
    x = check_x(x)
    if not callable(f):
        raise ArgumentTypeError("f", f"expected a callable, got {type(f).__name__}")
    n, h, w = x.shape[:3]
    labels, counts = _check_segments(segment_labels(segments, h, w), n, h, w)
    size = int(counts.max())
    per_image = labels.ndim == 3
    family = MaskFamily(segment_generator(per_image), jnp.asarray(labels if per_image else labels[None]), size,
                        (per_image,), "segments")
    prepared = prepare(f, x, fill=fill, units=units, params=params, blur_sigma=BLUR_SIGMA)
    base, scores, chunk = perturbed_outputs(prepared, family, difference=True, chunk_size=chunk_size,
                                            memory_budget=memory_budget, devices=devices,
                                            progress=progress and "ablation")
    scores[np.arange(size)[None, :] >= counts[:, None]] = 0  # labels an image lacks: empty masks
    return Ablation(scores, base, labels, counts, prepared.units, chunk)


# --------------------------------------------------------------------------- the registered method


@dataclasses.dataclass(frozen=True)
class AblationOptions:
    """Feature ablation as an attribution method (``jaxviz attribute --method ablation``, ``compare_methods``,
    ``run_dataset``): a ``segments`` x ``segments`` grid, or given segment ids (``slic_segments``)."""

    segments: Any = option(8, "a SEGMENTS x SEGMENTS grid of segments (or (H, W) / (N, H, W) segment ids)")
    fill: Any = option(0.0, FILL_HELP)


def _check(explained: Explained, options: AblationOptions) -> None:
    h, w = explained.network.input_spec.shape[:2]
    segment_labels(options.segments, h, w)


def _run(explained: Explained, x: Any, *, targets: np.ndarray, options: AblationOptions,
         execution: dict) -> Attribution:
    units = tuple(int(u) for u in np.unique(targets))  # only the explained outputs are kept
    result = feature_ablation(explained.f, x, segments=options.segments, fill=options.fill, units=units,
                              params=explained.network.variables, **execution)
    settings = {"segments": options.segments if isinstance(options.segments, int) else "given", "fill": options.fill}
    return Attribution(result.pixel_map(targets), targets, "ablation", settings, result)


def _run_family(options: AblationOptions, image_shape: tuple[int, int, int]) -> RunFamily:
    h, w, _ = image_shape
    cells_side = check_int(options.segments, "segments", 1, min(h, w))
    labels = grid_segments(h, w, cells=cells_side)
    family = MaskFamily(segment_generator(False), jnp.asarray(labels[None]), cells_side * cells_side, (False,))
    return RunFamily(family, (cells_side, cells_side), "difference", 1.0, {"segments": cells_side})


def _describe(options: AblationOptions) -> str:
    if isinstance(options.segments, int):
        return f"feature ablation over an {options.segments}x{options.segments} grid"
    return "feature ablation over given segments"


METHOD = Method("ablation", "feature ablation", "perturbation", AblationOptions, _run, _check, _describe,
                run_family=_run_family)
