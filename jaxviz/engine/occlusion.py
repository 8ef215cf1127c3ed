"""Occlusion as one fused, jit-compiled, vmapped batch.

``occlude(f, images, window=..., stride=...)`` slides a window over every
image, replaces the pixels under it with a fill value, and evaluates ``f`` on
every occluded copy. The single-example step is ``occlude_one(image, fill,
box)``; it is vmapped over (image, position) pairs, which are processed in
fixed-size chunks (the last one padded) so the program compiles once per
(shapes, options), and each chunk is sharded over all devices.

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
from jax.sharding import NamedSharding, PartitionSpec

from jaxviz._batching import batch_sharding, map_batches, round_up, to_host
from jaxviz._progress import progress_bar
from jaxviz.engine._inputs import _check_images, _fill_array, _pair, _positive_count, unit_indices  # noqa: F401
from jaxviz.engine._plan import default_memory_budget, probe, signature

__all__ = ["Occlusion", "occlude", "occlude_one", "unit_indices", "window_spans"]

ANCHORS = ("centered", "valid")


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
    h, w = image.shape[:2]
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    return jnp.where(inside[..., None], fill, image).astype(image.dtype)


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
          targets: optional int (N,): for image n keep only output
            ``targets[n]`` of the (kept) last output axis, as Captum's
            ``target``; this keeps memory at (N, H, W).

        Returns:
          float32 (N, H, W, *out) or, with ``targets``, (N, H, W, *out[:-1]).
        """
        grid = self.grid
        if targets is not None:
            targets = np.asarray(targets)
            n, units = grid.shape[0], grid.shape[-1]
            if targets.shape != (n,) or not np.issubdtype(targets.dtype, np.integer):
                raise ValueError(f"targets: expected {n} integers (one per image), got shape {targets.shape}")
            if targets.min() < 0 or targets.max() >= units:
                raise ValueError(f"targets: expected values in [0, {units}), got {targets.min()}..{targets.max()}")
            grid = np.take_along_axis(grid, targets.reshape((n,) + (1,) * (grid.ndim - 1)), axis=-1)[..., 0]
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


# --------------------------------------------------------------------------- compiled pieces


@functools.lru_cache(maxsize=64)
def _with_params(f: Callable) -> Callable:
    """``f(x)`` as ``g(params, x)`` (params ignored); the same ``g`` for the same ``f``, so caches hit."""
    return lambda _params, x: f(x)


@functools.lru_cache(maxsize=64)
def _chunk_program(f: Callable, per_image_fill: bool, units: tuple[int, ...] | None, sharding: NamedSharding,
                   chunk_size: int, materialize: bool) -> Callable:
    """Jitted ``(params, images, fills, base, boxes, start) -> grid rows start .. start + chunk_size``.

    ``f`` takes ``(params, x)``. Pair ``k`` is image ``k // positions`` at
    position ``k % positions``; pairs past the end (padding of the last
    chunk) repeat pair 0. The pair indices are made on the device, so a call
    sends only ``start``. Cached on its static configuration, so equal calls
    reuse one executable.
    """
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def chunk(params, images, fills, base, boxes, start):
        pairs = images.shape[0] * boxes.shape[0]
        k = jax.lax.with_sharding_constraint(start + jnp.arange(chunk_size, dtype=jnp.int32), sharding)
        k = jnp.where(k < pairs, k, 0)
        image_idx, box_idx = k // boxes.shape[0], k % boxes.shape[0]
        fill = fills[image_idx] if per_image_fill else fills
        in_axes = (0, 0 if per_image_fill else None, 0)
        occluded = jax.vmap(occlude_one, in_axes=in_axes)(images[image_idx], fill, boxes[box_idx])
        if materialize:
            occluded = jax.lax.optimization_barrier(occluded)
        out = f(params, occluded)
        if units is not None:
            out = out[..., jnp.asarray(units)]
        return base[image_idx] - out

    return jax.jit(chunk, in_shardings=(replicated,) * 6, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _base_program(f: Callable, units: tuple[int, ...] | None) -> Callable:
    def base(params, images):
        out = f(params, images)
        return out if units is None else out[..., jnp.asarray(units)]

    return jax.jit(base)


# --------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class _Request:
    """Validated arguments of one ``occlude`` call."""

    f: Callable  # f(params, x)
    params: Any
    images: jax.Array
    rows: np.ndarray
    cols: np.ndarray
    fills: jax.Array
    per_image_fill: bool
    units: tuple[int, ...] | None
    kept: tuple[int, ...]  # f's per-image output shape after ``units``
    example_bytes: int


def _check(f, images, window, stride, fill, anchor, units, params, blur_sigma) -> _Request:
    """Every argument checked (TypeError / ValueError naming it) before anything is compiled."""
    images = _check_images(images)
    n, h, w, _ = images.shape
    win, st = _pair(window, "window"), _pair(stride, "stride")
    if win[0] < 1 or win[1] < 1 or win[0] > h or win[1] > w:
        raise ValueError(f"window: expected 1 <= window <= image size ({h}, {w}), got {win}")
    if st[0] < 1 or st[1] < 1:
        raise ValueError(f"stride: expected positive ints, got {st}")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor: expected one of {ANCHORS}, got {anchor!r}")
    if not callable(f):
        raise TypeError(f"f: expected a callable, got {type(f).__name__}")
    fn = f if params is not None else _with_params(f)
    out_shape, example_bytes = probe(fn, True, signature(params), tuple(images.shape[1:]), images.dtype)
    if units is not None:
        if not out_shape:
            raise ValueError("units: f returns one value per image (shape (N,)); there are no units to select")
        units = unit_indices(units, out_shape[-1])
    fills, per_image_fill = _fill_array(fill, images, blur_sigma)
    rows, cols = window_spans(h, win[0], st[0], anchor), window_spans(w, win[1], st[1], anchor)
    kept = out_shape if units is None else (*out_shape[:-1], len(units))
    return _Request(fn, params, images, rows, cols, fills, per_image_fill, units, kept, example_bytes)


def _plan(req: _Request, pairs: int, shards: int, chunk_size: int | None, memory_budget: int | None) -> int:
    """Pairs per compiled call: from ``chunk_size`` or the memory budget, then spread evenly so the
    padded last chunk wastes little, and a multiple of the device count."""
    if chunk_size is None:
        budget = default_memory_budget(jax.default_backend()) if memory_budget is None else memory_budget
        # f's working set, plus the gathered and the occluded image and the kept output
        per_pair = req.example_bytes + 2 * req.images[0].nbytes + 4 * math.prod(req.kept)
        chunk_size = max(1, budget // per_pair) * shards
    chunks = -(-pairs // chunk_size)
    return round_up(-(-pairs // chunks), shards)


def _run_chunks(program: Callable, args: tuple, replicated: NamedSharding, pairs: int, chunk_size: int,
                grid: np.ndarray, progress: bool) -> None:
    """Fill ``grid`` (pairs, *kept) chunk by chunk; chunk i+1 is dispatched before chunk i is copied back,
    so the device never waits for the host."""
    pending = None
    with progress_bar(total=pairs, desc="occlusion", disable=not progress, unit="img") as bar:
        for start in [*range(0, pairs, chunk_size), None]:
            if start is not None:
                result = (start, program(*args, jax.device_put(np.int32(start), replicated)))
            if pending is not None:
                done, rows_out = pending
                stop = min(done + chunk_size, pairs)
                grid[done:stop] = to_host(rows_out)[: stop - done]
                bar.update(stop - done)
            pending = result if start is not None else None


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
    blur_sigma: float = 3.0,
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
    req = _check(f, images, window, stride, fill, anchor, units, params, blur_sigma)
    chunk_size = _positive_count(chunk_size, "chunk_size", "(image, position) pairs")
    memory_budget = _positive_count(memory_budget, "memory_budget", "bytes")
    n, h, w, _ = req.images.shape
    positions = len(req.rows) * len(req.cols)
    pairs = n * positions
    grid_shape = (n, len(req.rows), len(req.cols), *req.kept)
    if grid_out is None:
        grid_out = np.empty(grid_shape, np.float32)
    elif (not isinstance(grid_out, np.ndarray) or grid_out.shape != grid_shape or grid_out.dtype != np.float32
          or not grid_out.flags.writeable or not grid_out.flags.c_contiguous):
        raise ValueError(f"grid_out: expected a writable, C-contiguous float32 array of shape {grid_shape}, got "
                         f"{getattr(grid_out, 'dtype', type(grid_out).__name__)} {getattr(grid_out, 'shape', '')}")

    sharding = batch_sharding(None if devices is None else tuple(devices))
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    chunk_size = _plan(req, pairs, sharding.mesh.size, chunk_size, memory_budget)
    program = _chunk_program(req.f, req.per_image_fill, req.units, sharding, chunk_size, bool(materialize))
    base = map_batches(functools.partial(_base_program(req.f, req.units), req.params), req.images,
                       batch_size=chunk_size, devices=tuple(sharding.mesh.devices.flat))
    rows, cols = req.rows, req.cols
    boxes = np.concatenate([np.repeat(rows, len(cols), 0), np.tile(cols, (len(rows), 1))], axis=1)
    args = jax.device_put((req.params, req.images, req.fills, base, boxes), replicated)
    _run_chunks(program, args, replicated, pairs, chunk_size, grid_out.reshape(pairs, *req.kept), progress)
    return Occlusion(base, grid_out, rows, cols, (h, w), req.units, chunk_size)
