"""Occlusion as one fused, jit-compiled, vmapped batch.

``occlude(f, images, window=..., stride=...)`` slides a window over every
image, replaces the pixels under it with a fill value, and evaluates ``f`` on
every occluded copy. It is one client of the perturbation engine
(``jaxviz.engine.perturb``): each window position is a mask made on the device
from its box, the per-pair step (mask, then fill) is vmapped over (image,
position) pairs, and pairs run in fixed-size chunks (the last one padded) so
the program compiles once per (shapes, options), each chunk sharded over all
devices. ``occlude_one(image, fill, box)`` is the same step for one example.

Semantics:

* ``grid[n, r, c] = f(images)[n] - f(occluded(images, r, c))[n]``: positive
  where hiding the window *lowers* the output (the notebook's "original
  activation minus occluded activation", Captum's sign).
* Anchoring ``"centered"`` (the notebook): window centres at
  ``floor(win / 2) + k * stride`` for every centre inside the image; the
  window spans ``[centre - floor(win / 2), centre - floor(win / 2) + win)``,
  cut at the bottom/right border.
* Anchoring ``"valid"`` (Captum's ``Occlusion``): ``ceil((dim - win) /
  stride) + 1`` windows per axis starting at ``k * stride``; when the last
  one would overrun the border it is cut there, as Captum's mask padding does.
* ``pixel[n, y, x]``: the mean of the grid values of all windows that cover
  pixel ``(y, x)``, Captum's averaging of overlaps; 0 where no window covers
  the pixel (possible only when ``stride > window``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, check_pair
from jaxviz.engine.inputs import check_images, unit_indices
from jaxviz.engine.perturb import BLUR_SIGMA, MaskFamily, perturbed_outputs, prepare
from jaxviz.methods.base import Attribution, Explained, Method, RunFamily, option, select_targets

__all__ = ["METHOD", "Occlusion", "OcclusionOptions", "WINDOW", "check_windows", "occlude", "occlude_one", "unit_indices", "window_spans"]

ANCHORS = ("centered", "valid")
# The default occluder size (pixels) where occlusion is one attribution method: run_dataset, compare_methods and
# method_map, ``jaxviz attribute``. ``occlude`` itself has none; the unit study's own default is
# jaxviz.analysis.unit_occlusion.UNIT_WINDOW.
WINDOW = 8


def window_spans(dim: int, window: int, stride: int, anchor: str) -> np.ndarray:
    """Occluder extents along one axis.

    Args:
      dim: image size along the axis.
      window: occluder size along the axis.
      stride: step between consecutive windows.
      anchor: ``"centered"`` or ``"valid"`` (see the module docstring).

    Returns:
      int32 (positions, 2): ``[start, stop)`` of each window, already cut at
      the border.
    """
    if anchor == "centered":
        half = window // 2
        starts = np.arange(half, dim, stride) - half
    else:
        starts = np.arange(math.ceil((dim - window) / stride) + 1) * stride
    return np.stack([starts, np.minimum(starts + window, dim)], axis=1).astype(np.int32)


def occlude_one(image: jax.Array, fill: jax.Array, box: jax.Array) -> jax.Array:
    """One occluded copy of one image.

    Args:
      image: (H, W, C).
      fill: broadcastable to (H, W, C): what replaces the covered pixels.
      box: int (4,) = (row_start, row_stop, col_start, col_stop), half-open.

    Returns:
      (H, W, C): ``image`` with ``fill`` inside the box.
    """
    return jnp.where(_inside(box, image.shape[:2])[..., None], fill, image).astype(image.dtype)


def _inside(box: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """bool (H, W): the pixels of the half-open ``box`` (row_start, row_stop, col_start, col_stop)."""
    rows = jnp.arange(shape[0])[:, None]
    cols = jnp.arange(shape[1])[None, :]
    return (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])


@dataclasses.dataclass(frozen=True)
class Occlusion:
    """The result of ``occlude``.

    Attributes:
      base: f on the unoccluded images, (N, *out).
      grid: base - f(occluded), (N, rows, cols, *out).
      row_spans, col_spans: int (rows, 2) and (cols, 2), each window's
        half-open ``[start, stop)`` extent.
      image_shape: (H, W).
      units: the kept indices of f's last output axis (``None``: all).
      chunk_size: (image, position) pairs per compiled call in this run.
    """

    base: np.ndarray
    grid: np.ndarray
    row_spans: np.ndarray
    col_spans: np.ndarray
    image_shape: tuple[int, int]
    units: tuple[int, ...] | None = None
    chunk_size: int | None = None

    def _cover(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.image_shape
        rows = (np.arange(h)[None] >= self.row_spans[:, :1]) & (np.arange(h)[None] < self.row_spans[:, 1:])
        cols = (np.arange(w)[None] >= self.col_spans[:, :1]) & (np.arange(w)[None] < self.col_spans[:, 1:])
        return rows.astype(np.float32), cols.astype(np.float32)

    def pixel_map(self, targets: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Per-pixel attribution: the mean grid value of the windows covering each pixel.

        Args:
          targets: optional int (N,): for image n keep only output ``targets[n]`` of f (an index of f's
            outputs, among the kept ``units``), as Captum's ``target``; this keeps memory at (N, H, W).

        Returns:
          float32 (N, H, W, *out) or, with ``targets``, (N, H, W, *out[:-1]).
        """
        grid = self.grid if targets is None else select_targets(self.grid, targets, self.units)
        rows, cols = self._cover()
        total = np.einsum("ry,nrc...->nyc...", rows, grid, optimize=True)
        total = np.einsum("cx,nyc...->nyx...", cols, total, optimize=True)
        count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        count = count.reshape(count.shape + (1,) * (total.ndim - 3))
        return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)

    @functools.cached_property
    def pixel(self) -> np.ndarray:
        """``pixel_map()`` for every kept output, (N, H, W, *out)."""
        return self.pixel_map()


# --------------------------------------------------------------------------- occlusion as masks


def _box_mask(boxes: jax.Array, image: jax.Array, index: jax.Array, *, shape: tuple[int, int]) -> jax.Array:
    """Mask ``index`` of the window family: 1 inside box ``boxes[index]`` (any image)."""
    return _inside(boxes[index], shape).astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def _box_generator(shape: tuple[int, int]) -> Callable:
    return functools.partial(_box_mask, shape=shape)


def window_masks(image_shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> MaskFamily:
    """Every window position as a ``MaskFamily`` (row-major over positions)."""
    boxes = np.concatenate([np.repeat(rows, len(cols), 0), np.tile(cols, (len(rows), 1))], axis=1)
    return MaskFamily(_box_generator(tuple(image_shape)), jnp.asarray(boxes, jnp.int32), len(boxes),
                      argument="stride")


def check_windows(images: jax.Array, window: Any, stride: Any, anchor: Any) -> tuple[np.ndarray, np.ndarray]:
    h, w = images.shape[1:3]
    win, st = check_pair(window, "window"), check_pair(stride, "stride")
    if win[0] < 1 or win[1] < 1 or win[0] > h or win[1] > w:
        raise ArgumentError("window", f"expected 1 <= window <= image size ({h}, {w}), got {win}")
    if st[0] < 1 or st[1] < 1:
        raise ArgumentError("stride", f"expected positive ints, got {st}")
    if anchor not in ANCHORS:
        raise ArgumentError("anchor", f"expected one of {ANCHORS}, got {anchor!r}")
    return window_spans(h, win[0], st[0], anchor), window_spans(w, win[1], st[1], anchor)


# --------------------------------------------------------------------------- entry point


def occlude(
    f: Callable,
    images: Any,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    fill: Any = 0.0,
    anchor: str = "centered",
    units: Sequence[int] | None = None,
    params: Any = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    blur_sigma: float = BLUR_SIGMA,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    materialize: bool = True,
    grid_out: np.ndarray | None = None,
) -> Occlusion:
    """Occlusion sensitivity of ``f`` for every window position and every image.

    Args:
      f: a pure JAX function ``f(x) -> (N, *out)``, or ``f(params, x)`` when
        ``params`` is given (pass the variables this way rather than closing
        over them: they stay arguments, not compiled constants). ``x`` is
        (N, H, W, C). Use the same function object across calls to reuse the
        compiled program.
      images: float (N, H, W, C), in the space ``f`` expects.
      window: occluder (h, w) or one int for a square.
      stride: step (sh, sw) or one int.
      fill: scalar, per-channel (C,), image-shaped (H, W, C) or per-image
        (N, H, W, C) baseline, or ``"blur"`` (a Gaussian-blurred copy of each
        image, ``blur_sigma`` pixels).
      anchor: ``"centered"`` (the notebook) or ``"valid"`` (Captum).
      units: indices of f's last output axis to keep (default all): ints, in
        the order given, or a boolean mask over that axis. Floats are refused.
      params: optional first argument of ``f``.
      chunk_size: at most this many (image, position) pairs per compiled
        call; default: as many as ``memory_budget`` allows. Pairs are spread
        evenly over the chunks and the last one is padded to the same size.
      memory_budget: bytes per device (an int, or an integral float such as
        ``1e8``) for one chunk's working set, estimated
        from a trace of ``f`` (peak live intermediates, an upper bound);
        default 128 MiB on CPUs (about 250 pairs for the jaxviz CNN; larger
        chunks are no faster there) and 2 GiB on accelerators.
      blur_sigma: Gaussian sigma for ``fill="blur"``.
      devices: devices to shard chunks over (default all).
      progress: show a progress bar.
      materialize: pass the occluded batch through ``lax.optimization_barrier``
        before ``f``, so XLA cannot fuse the masking into ``f``'s first layer
        (on jax 0.10's XLA:CPU the compiled program is the same either way).
      grid_out: optional writable float32 array of the grid's shape, e.g.
        ``np.lib.format.open_memmap(path, "w+", np.float32, shape)``, that
        receives the grid, so a huge run (every position of 10,000 images,
        all units) needs no host memory for it.

    Returns:
      ``Occlusion`` with ``base`` (N, *out), ``grid`` (N, rows, cols, *out)
      and ``pixel`` (N, H, W, *out), where out's last axis is cut to ``units``.

    Raises:
      TypeError / ValueError naming the argument, before anything is compiled.
    """
    images = check_images(images)
    rows, cols = check_windows(images, window, stride, anchor)
    p = prepare(f, images, fill=fill, units=units, params=params, blur_sigma=blur_sigma)
    n, h, w, _ = p.images.shape
    grid_shape = (n, len(rows), len(cols), *p.kept)
    if grid_out is not None and (not isinstance(grid_out, np.ndarray) or grid_out.shape != grid_shape):
        raise ArgumentError("grid_out", f"expected a writable, C-contiguous float32 array of shape {grid_shape}, got "
                         f"{getattr(grid_out, 'dtype', type(grid_out).__name__)} {getattr(grid_out, 'shape', '')}")
    flat = None if grid_out is None else grid_out.reshape(n, len(rows) * len(cols), *p.kept)
    if flat is not None and not np.shares_memory(flat, grid_out):
        raise ArgumentError("grid_out", "expected a C-contiguous array (its reshape must be a view)")
    base, outputs, size = perturbed_outputs(
        p, window_masks((h, w), rows, cols), difference=True, chunk_size=chunk_size, memory_budget=memory_budget,
        devices=devices, progress=progress and "occlusion", materialize=materialize, out=flat)
    grid = outputs.reshape(grid_shape) if grid_out is None else grid_out
    return Occlusion(base, grid, rows, cols, (h, w), p.units, size)


# --------------------------------------------------------------------------- the registered method

FILL_HELP = ("what replaces removed pixels: a number, per-channel or image values in model-input space, or 'blur' "
             "(a blurred copy)")


@dataclasses.dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion as an attribution method (``jaxviz attribute --method occlusion``, ``compare_methods``,
    ``run_dataset``)."""

    window: int = option(WINDOW, "occluder size in pixels")
    stride: int = option(4, "occluder step in pixels")
    anchor: str = option("centered", "occluder placement", choices=ANCHORS)
    fill: Any = option(0.0, FILL_HELP)


def _check(explained: Explained, options: OcclusionOptions) -> None:
    h, w, c = explained.network.input_spec.shape
    check_windows(jnp.zeros((1, h, w, c)), options.window, options.stride, options.anchor)


def _run(explained: Explained, x: Any, *, targets: np.ndarray, options: OcclusionOptions,
         execution: dict) -> Attribution:
    units = tuple(int(u) for u in np.unique(targets))  # only the explained outputs are kept
    result = occlude(explained.f, x, window=options.window, stride=options.stride, anchor=options.anchor,
                     fill=options.fill, units=units, params=explained.network.variables, **execution)
    return Attribution(result.pixel_map(targets), targets, "occlusion", dataclasses.asdict(options), result)


def _run_family(options: OcclusionOptions, image_shape: tuple[int, int, int]) -> RunFamily:
    h, w, c = image_shape
    rows, cols = check_windows(jnp.zeros((1, h, w, c)), options.window, options.stride, options.anchor)
    settings = {"window": list(np.broadcast_to(options.window, 2).tolist()),
                "stride": list(np.broadcast_to(options.stride, 2).tolist()), "anchor": options.anchor,
                "row_spans": rows.tolist(), "col_spans": cols.tolist()}
    return RunFamily(window_masks((h, w), rows, cols), (len(rows), len(cols)), "difference", 1.0, settings)


def _describe(options: OcclusionOptions) -> str:
    return f"occlusion ({options.window}x{options.window} window, stride {options.stride})"


METHOD = Method("occlusion", "occlusion", "perturbation", OcclusionOptions, _run, _check, _describe,
                run_family=_run_family)
