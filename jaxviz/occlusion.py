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

from jaxviz._plan import default_memory_budget, probe, signature
from jaxviz._progress import progress_bar
from jaxviz.batching import batch_sharding, map_batches, round_up, to_host

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


@dataclasses.dataclass
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


# --------------------------------------------------------------------------- input checks


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name}: expected an int or a pair of ints (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def unit_indices(units: Any, width: int, name: str = "units") -> tuple[int, ...]:
    """Validate a selection of output units: integer indices, or a boolean mask of length ``width``.

    Args:
      units: a sequence or array of ints in ``[0, width)`` (order kept, repeats
        allowed), or a boolean mask of shape ``(width,)`` selecting the units
        where it is True (in increasing order).
      width: size of the output axis the units index.

    Returns:
      The indices as a tuple of Python ints.

    Raises:
      TypeError: floats, strings or other non-integer values (``3.7`` is not
        rounded to a unit).
      ValueError: empty, out of range, or a mask of the wrong length.
    """
    if isinstance(units, (str, bytes)) or not hasattr(units, "__len__") and not isinstance(units, np.ndarray):
        raise TypeError(f"{name}: expected a sequence of int indices or a boolean mask, got {type(units).__name__}")
    arr = np.asarray(units)
    if arr.dtype == bool:
        if arr.shape != (width,):
            raise ValueError(f"{name}: a boolean mask must have shape ({width},) (one entry per unit), "
                             f"got shape {arr.shape}")
        arr = np.flatnonzero(arr)
    elif arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected int indices (or a boolean mask), got dtype {arr.dtype}: {units!r}")
    indices = tuple(int(u) for u in arr.reshape(-1))
    if not indices or min(indices) < 0 or max(indices) >= width:
        raise ValueError(f"{name}: expected at least one index in [0, {width}) of f's last output axis, "
                         f"got {list(indices)}")
    return indices


def _positive_count(value: Any, name: str, what: str) -> int | None:
    """``None`` or a positive integer (an int, numpy int, or an integral float such as ``1e8``)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a positive number of {what} or None, got {value!r}")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive number of {what} or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive number of {what} or None, got {value!r}")
    return int(value)


def _check_images(images: Any) -> jax.Array:
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"images: expected an array (N, H, W, C), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images: expected rank 4 (N, H, W, C), got shape {tuple(images.shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images: expected a floating dtype (use jaxviz.to_model_input on uint8), "
                        f"got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one image, got N = 0")
    if not bool(jnp.isfinite(jnp.asarray(images)).all()):
        raise ValueError("images: contains NaN or infinite values")
    return jnp.asarray(images)


def _fill_array(fill: Any, images: jax.Array, blur_sigma: float) -> tuple[jax.Array, bool]:
    """The fill as (H, W, C)-broadcastable shared array, or (N, H, W, C) per image."""
    n, h, w, c = images.shape
    expected = f"a number, per-channel ({c},), image ({h}, {w}, {c}) or per-image ({n}, {h}, {w}, {c}) values, or 'blur'"
    if isinstance(fill, str):
        if fill != "blur":
            raise ValueError(f"fill: expected {expected}; got the string {fill!r}")
        if not isinstance(blur_sigma, (int, float, np.integer, np.floating)) or not 0 < blur_sigma < np.inf:
            raise ValueError(f"blur_sigma: expected a positive number of pixels, got {blur_sigma!r}")
        from scipy.ndimage import gaussian_filter
        blurred = gaussian_filter(np.asarray(images, np.float32), sigma=(0, blur_sigma, blur_sigma, 0))
        return jnp.asarray(blurred, images.dtype), True
    if fill is None or isinstance(fill, (bool, np.bool_)) or not (
            isinstance(fill, (int, float, np.number, np.ndarray, jax.Array, list, tuple))):
        hint = " (convert it with .numpy() first)" if type(fill).__module__.startswith("torch") else ""
        raise TypeError(f"fill: expected {expected}; got {type(fill).__name__}{hint}")
    try:
        arr = jnp.asarray(fill, images.dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"fill: expected {expected}; got {fill!r} ({e})") from None
    allowed = {(): False, (c,): False, (h, w, c): False, (n, h, w, c): True}
    if arr.shape not in allowed:
        raise ValueError(f"fill: expected a scalar, shape ({c},), ({h}, {w}, {c}) or ({n}, {h}, {w}, {c}), "
                         f"or 'blur'; got shape {tuple(arr.shape)}")
    if not bool(jnp.isfinite(arr).all()):
        raise ValueError("fill: contains NaN or infinite values")
    per_image = allowed[arr.shape]
    return (arr if per_image else jnp.broadcast_to(arr, (h, w, c))), per_image


# --------------------------------------------------------------------------- compiled pieces


# Materialize the occluded batch before f, so XLA cannot fuse the select into the
# first convolution's input. In jax 0.10's XLA:CPU the masking already stays in its
# own loop fusion ahead of the network (one YNNPACK fusion) and the compiled HLO is
# the same with or without this; it keeps the separation explicit elsewhere.
_materialize = jax.lax.optimization_barrier


@functools.lru_cache(maxsize=64)
def _chunk_program(f: Callable, with_params: bool, per_image_fill: bool, units: tuple[int, ...] | None,
                   sharding: NamedSharding, chunk_size: int) -> Callable:
    """Jitted ``(params, images, fills, base, boxes, start) -> grid rows start .. start + chunk_size``.

    Pair ``k`` is image ``k // positions`` at position ``k % positions``;
    pairs past the end (padding of the last chunk) repeat pair 0. The pair
    indices are made on the device, so a call sends only ``start``. Cached
    on its static configuration, so equal calls reuse one executable.
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
        occluded = _materialize(occluded)
        out = f(params, occluded) if with_params else f(occluded)
        if units is not None:
            out = out[..., jnp.asarray(units)]
        return base[image_idx] - out

    return jax.jit(chunk, in_shardings=(replicated,) * 6, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _base_program(f: Callable, with_params: bool, units: tuple[int, ...] | None) -> Callable:
    def base(params, images):
        out = f(params, images) if with_params else f(images)
        return out if units is None else out[..., jnp.asarray(units)]

    return jax.jit(base)


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
    out_shape, example_bytes = probe(f, params is not None, signature(params), tuple(images.shape[1:]),
                                     images.dtype)
    if units is not None:
        if not out_shape:
            raise ValueError("units: f returns one value per image (shape (N,)); there are no units to select")
        units = unit_indices(units, out_shape[-1])
    chunk_size = _positive_count(chunk_size, "chunk_size", "(image, position) pairs")
    memory_budget = _positive_count(memory_budget, "memory_budget", "bytes")
    fills, per_image_fill = _fill_array(fill, images, blur_sigma)

    rows, cols = window_spans(h, win[0], st[0], anchor), window_spans(w, win[1], st[1], anchor)
    boxes = np.concatenate([np.repeat(rows, len(cols), 0), np.tile(cols, (len(rows), 1))], axis=1)
    positions = len(boxes)
    pairs = n * positions
    kept = out_shape if units is None else (*out_shape[:-1], len(units))
    grid_shape = (n, len(rows), len(cols), *kept)
    if grid_out is None:
        grid_out = np.empty(grid_shape, np.float32)
    elif (not isinstance(grid_out, np.ndarray) or grid_out.shape != grid_shape or grid_out.dtype != np.float32
          or not grid_out.flags.writeable or not grid_out.flags.c_contiguous):
        raise ValueError(f"grid_out: expected a writable, C-contiguous float32 array of shape {grid_shape}, got "
                         f"{getattr(grid_out, 'dtype', type(grid_out).__name__)} {getattr(grid_out, 'shape', '')}")

    sharding = batch_sharding(None if devices is None else tuple(devices))
    shards = sharding.mesh.size
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    with_params = params is not None
    if chunk_size is None:
        budget = default_memory_budget(jax.default_backend()) if memory_budget is None else memory_budget
        # f's working set, plus the gathered and the occluded image and the kept output
        per_pair = example_bytes + 2 * images[0].nbytes + 4 * math.prod(kept)
        chunk_size = max(1, budget // per_pair) * shards
    # as few chunks as the size allows, then spread evenly so the padding is small
    chunks = -(-pairs // chunk_size)
    chunk_size = round_up(-(-pairs // chunks), shards)
    program = _chunk_program(f, with_params, per_image_fill, units, sharding, chunk_size)
    base = map_batches(functools.partial(_base_program(f, with_params, units), params), images,
                       batch_size=chunk_size, devices=tuple(sharding.mesh.devices.flat))
    args = jax.device_put((params, images, fills, base, boxes), replicated)

    grid = grid_out.reshape(pairs, *kept)  # a view: rows are written in place
    pending = None  # dispatch chunk i+1 before copying chunk i back, so the device never waits
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
    grid = grid_out
    return Occlusion(base, grid, rows, cols, (h, w), units, chunk_size)
