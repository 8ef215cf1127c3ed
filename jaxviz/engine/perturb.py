"""The perturbation engine: ``f`` on many masked copies of every image, as one compiled program.

A perturbation is a mask ``m`` in [0, 1]^(H x W) and a fill; the perturbed
image is ``x * (1 - m) + fill * m`` (a binary mask is exact: kept pixels stay
bit-identical, perturbed ones become the fill). Masks are *data*: a
``MaskFamily`` names a pure generator ``generate(data, image, index) -> (H, W)``
and the compact ``data`` it reads (window boxes, a PRNG key, a segment map, a
pixel ranking...), and the masks are made on the device inside the compiled
chunk, so no (pairs, H, W, C) array ever exists on the host.

Two reductions, both over fixed-size padded chunks of (image, mask) pairs
sized from a memory budget and sharded over devices, like occlusion:

* ``perturbed_outputs``: ``f`` of every pair, or ``f(x) - f(perturbed)`` with
  ``difference=True``, streamed to the host (or a memory map): (N, masks, *out).
* ``mask_weighted_sum``: ``sum_k f(perturbed_k) * (1 - m_k)`` per image,
  accumulated on the device (RISE's saliency), so memory does not grow with
  the number of masks: (N, H, W, *out).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxviz._batching import batch_sharding, map_batches, to_host
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_pair_count
from jaxviz.engine.inputs import check_images, fill_array, unit_indices
from jaxviz.engine.plan import chunk_size_for, probe, signature

__all__ = ["BLUR_SIGMA", "MASK_SUM_PRECISION", "MaskFamily", "Prepared", "bytes_per_pair", "kept_units", "mask_weighted_sum",
           "mask_weighted_sum_of_chunk", "perturbed_outputs", "perturbed_pairs", "prepare"]

BLUR_SIGMA = 3.0  # pixels: the Gaussian blur of fill="blur", the default of every method that takes it

# The one precision of RISE's weighted sum (``mask_weighted_sum`` here and a RISE dataset run in
# ``jaxviz.runs``): full float32 products, so TF32 on GPUs and bfloat16 passes on TPUs do not make ``rise()``
# and a dataset run disagree (on CPU every precision is full float32).
MASK_SUM_PRECISION = jax.lax.Precision.HIGHEST


def mask_weighted_sum_of_chunk(keep: jax.Array, out: jax.Array, slot: jax.Array) -> jax.Array:
    """One chunk's contribution to ``sum_k f(perturbed_k) * (1 - m_k)``, at ``MASK_SUM_PRECISION``.

    Args:
      keep: (C, H, W) ``1 - m`` of the chunk's C (image, mask) pairs, 0 for padding.
      out: (C, U) their outputs f(perturbed), flattened.
      slot: (C, S) one-hot image slot of each pair (0 for padding).

    Returns:
      (S, H, W, U): per slot, the sum over its pairs of ``keep * out``.
    """
    return jnp.einsum("chw,cu,cs->shwu", keep, out, slot, precision=MASK_SUM_PRECISION)


@dataclasses.dataclass(frozen=True)
class MaskFamily:
    """``count`` masks per image, generated on the device.

    Attributes:
      generate: pure ``generate(data, image, index) -> float32 (H, W)`` in [0, 1]
        (1 = perturbed), for int32 scalars ``image`` and ``index``; a
        module-level function (it keys the compiled-program cache).
      data: pytree of arrays it reads (placed on every device).
      count: masks per image.
      static: hashable settings the generator closes over through
        ``functools.partial`` (part of the cache key).
      argument: the argument that sets ``count`` (``num_masks``, ``segments``, ...), which the
        engine's int32 pair-count error names.
    """

    generate: Callable
    data: Any
    count: int
    static: tuple = ()
    argument: str = "count"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Checked arguments shared by every perturbation method."""

    f: Callable  # f(params, x)
    params: Any
    images: jax.Array
    fills: jax.Array
    per_image_fill: bool
    units: tuple[int, ...] | None
    kept: tuple[int, ...]  # f's per-image output shape after ``units``
    example_bytes: int


@functools.lru_cache(maxsize=64)
def _with_params(f: Callable) -> Callable:
    """``f(x)`` as ``g(params, x)`` (params ignored); the same ``g`` for the same ``f``, so caches hit."""
    return lambda _params, x: f(x)


def prepare(f: Callable, images: Any, *, fill: Any, units: Any, params: Any, blur_sigma: float) -> Prepared:
    """Check the arguments every method shares (TypeError / ValueError naming them), before compiling."""
    images = check_images(images)
    if not callable(f):
        raise ArgumentTypeError("f", f"expected a callable, got {type(f).__name__}")
    fn = f if params is not None else _with_params(f)
    out_shape, example_bytes = probe(fn, True, signature(params), tuple(images.shape[1:]), images.dtype)
    if units is not None:
        if not out_shape:
            raise ArgumentError("units", "f returns one value per image (shape (N,)); there are no units to select")
        units = unit_indices(units, out_shape[-1])
    fills, per_image_fill = fill_array(fill, images, blur_sigma)
    kept = out_shape if units is None else (*out_shape[:-1], len(units))
    return Prepared(fn, params, images, fills, per_image_fill, units, kept, example_bytes)


def perturbed_pairs(images, fills, per_image_fill, family_data, generate, count, k, materialize):
    """The perturbed copies of pairs ``k`` (image ``k // count``, mask ``k % count``) and their masks."""
    image_idx, mask_idx = k // count, k % count
    masks = jax.vmap(generate, in_axes=(None, 0, 0))(family_data, image_idx, mask_idx)  # (C, H, W)
    m = masks[..., None].astype(images.dtype)
    fill = fills[image_idx] if per_image_fill else fills
    out = images[image_idx] * (1 - m) + fill * m
    return (jax.lax.optimization_barrier(out) if materialize else out), masks, image_idx


def kept_units(out, units):
    """``out`` restricted to the kept ``units`` along its last axis (all when None)."""
    return out if units is None else out[..., jnp.asarray(units)]


@functools.lru_cache(maxsize=64)
def _outputs_program(f, generate, count, per_image_fill, units, difference, sharding, chunk_size, materialize):
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def chunk(params, images, fills, data, base, start):
        pairs = images.shape[0] * count
        k = jax.lax.with_sharding_constraint(start + jnp.arange(chunk_size, dtype=jnp.int32), sharding)
        k = jnp.where(k < pairs, k, 0)  # padding repeats pair 0
        x, _, image_idx = perturbed_pairs(images, fills, per_image_fill, data, generate, count, k, materialize)
        out = kept_units(f(params, x), units)
        return base[image_idx] - out if difference else out

    return jax.jit(chunk, in_shardings=(replicated,) * 6, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _sum_program(f, generate, count, per_image_fill, units, sharding, chunk_size, slots, materialize):
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def chunk(params, images, fills, data, acc, start):
        n = images.shape[0]
        pairs = n * count
        k = jax.lax.with_sharding_constraint(start + jnp.arange(chunk_size, dtype=jnp.int32), sharding)
        valid = k < pairs
        x, masks, image_idx = perturbed_pairs(images, fills, per_image_fill, data, generate, count,
                                         jnp.where(valid, k, 0), materialize)
        out = kept_units(f(params, x), units)
        keep = (1 - masks) * valid[:, None, None]  # padding adds nothing
        first = start // count  # the chunk's pairs belong to images first .. first + slots - 1
        slot = jax.nn.one_hot(image_idx - first, slots, dtype=out.dtype) * valid[:, None]
        flat = out.reshape(chunk_size, -1)
        contrib = mask_weighted_sum_of_chunk(keep.astype(out.dtype), flat, slot)
        rows = jnp.clip(first + jnp.arange(slots), 0, n - 1)
        contrib = jnp.where((first + jnp.arange(slots) < n)[:, None, None, None], contrib, 0)
        return acc.at[rows].add(contrib.reshape(slots, *acc.shape[1:]))

    return jax.jit(chunk, in_shardings=(replicated,) * 6, out_shardings=replicated, donate_argnums=4)


@functools.lru_cache(maxsize=64)
def _base_program(f, units):
    return jax.jit(lambda params, images: kept_units(f(params, images), units))


def bytes_per_pair(example_bytes: int, image_shape: tuple[int, int, int], itemsize: int, kept: int) -> int:
    """The perturbation engine's memory model, the one every perturbation program (and a dataset run)
    plans its chunks with: f's working set per example (``probe``), plus the gathered and the perturbed
    image (``image_shape`` (H, W, C) of ``itemsize`` bytes), the float32 mask and the ``kept`` float32
    outputs of one (image, mask) pair."""
    h, w, c = image_shape
    return example_bytes + 2 * h * w * c * itemsize + 4 * h * w + 4 * kept


def _chunk_size(p: Prepared, pairs: int, shards: int, chunk_size: Any, memory_budget: Any) -> int:
    """Pairs per compiled call (``chunk_size_for`` at ``bytes_per_pair``)."""
    per_pair = bytes_per_pair(p.example_bytes, p.images.shape[1:], p.images.dtype.itemsize, math.prod(p.kept))
    return chunk_size_for(per_pair, pairs, shards, chunk_size, memory_budget, "(image, mask) pairs")


def base_outputs(p: Prepared, batch_size: int, sharding: NamedSharding) -> np.ndarray:
    """``f`` on the unperturbed images, (N, *kept)."""
    return map_batches(functools.partial(_base_program(p.f, p.units), p.params), p.images, batch_size=batch_size,
                       devices=tuple(sharding.mesh.devices.flat))


def perturbed_outputs(p: Prepared, family: MaskFamily, *, difference: bool, chunk_size: Any = None,
                      memory_budget: Any = None, devices: Any = None, progress: bool | str = False,
                      materialize: bool = True, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``f`` on every (image, mask) pair.

    Args:
      p: from ``prepare``.
      family: the masks.
      difference: return ``f(x) - f(perturbed)`` (positive where perturbing lowers f) instead of ``f(perturbed)``.
      chunk_size, memory_budget, devices, progress, materialize: as in ``occlude``.
      out: optional writable C-contiguous float32 array (N, count, *kept) that receives the result.

    Returns:
      ``(base (N, *kept), outputs (N, count, *kept), chunk_size)``.
    """
    n = p.images.shape[0]
    check_pair_count(n, family.count, family.argument, "masks per image")
    pairs = n * family.count
    shape = (n, family.count, *p.kept)
    if out is None:
        out = np.empty(shape, np.float32)
    elif (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
          or not out.flags.writeable or not out.flags.c_contiguous):
        raise ArgumentError("grid_out", f"expected a writable, C-contiguous float32 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    sharding = batch_sharding(None if devices is None else tuple(devices))
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    size = _chunk_size(p, pairs, sharding.mesh.size, chunk_size, memory_budget)
    program = _outputs_program(p.f, family.generate, family.count, p.per_image_fill, p.units, bool(difference),
                               sharding, size, bool(materialize))
    base = base_outputs(p, size, sharding)
    args = jax.device_put((p.params, p.images, p.fills, family.data, base), replicated)
    rows = out.reshape(pairs, *p.kept)  # a view: chunks are written in place
    pending = None  # dispatch chunk i+1 before copying chunk i back, so the device never waits
    label = progress if isinstance(progress, str) else "perturbations"
    with progress_bar(total=pairs, desc=label, disable=not progress, unit="img") as bar:
        for start in [*range(0, pairs, size), None]:
            if start is not None:
                result = (start, program(*args, jax.device_put(np.int32(start), replicated)))
            if pending is not None:
                done, chunk = pending
                stop = min(done + size, pairs)
                rows[done:stop] = to_host(chunk)[: stop - done]
                bar.update(stop - done)
            pending = result if start is not None else None
    return base, out, size


def mask_weighted_sum(p: Prepared, family: MaskFamily, *, chunk_size: Any = None, memory_budget: Any = None,
                      devices: Any = None, progress: bool | str = False,
                      materialize: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """``sum_k f(perturbed_k) * (1 - m_k)`` per image, accumulated on the device.

    Returns:
      ``(base (N, *kept), sums float32 (N, H, W, *kept), chunk_size)``.
    """
    n, h, w = p.images.shape[:3]
    check_pair_count(n, family.count, family.argument, "masks per image")
    pairs = n * family.count
    sharding = batch_sharding(None if devices is None else tuple(devices))
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    size = _chunk_size(p, pairs, sharding.mesh.size, chunk_size, memory_budget)
    slots = min(n, -(-size // family.count) + 1)  # images one chunk can touch
    program = _sum_program(p.f, family.generate, family.count, p.per_image_fill, p.units, sharding, size, slots,
                           bool(materialize))
    base = base_outputs(p, size, sharding)
    args = jax.device_put((p.params, p.images, p.fills, family.data), replicated)
    acc = jax.device_put(jnp.zeros((n, h, w, math.prod(p.kept)), jnp.float32), replicated)
    label = progress if isinstance(progress, str) else "perturbations"
    with progress_bar(total=pairs, desc=label, disable=not progress, unit="img") as bar:
        for start in range(0, pairs, size):
            acc = program(*args, acc, jax.device_put(np.int32(start), replicated))
            bar.update(min(size, pairs - start))
    return base, to_host(acc).reshape(n, h, w, *p.kept), size
