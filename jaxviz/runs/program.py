"""One compiled program per step of a dataset run: maps of a block of images and their aggregates.

A step takes a block of uint8 images sharded over every device of every
process (``shard_map`` over one global ``"batch"`` axis). Each device
converts its images to model input, evaluates ``f`` on every (image, mask)
pair in fixed-size sub-chunks (``lax.map`` / ``lax.scan``: memory bounded by
the chunk planner), turns the outputs into one map per image and unit
(``maps``: (b, R, C, U)), and reduces them in the same program:

* per image: the maximum of the map and its flat position (first on ties);
* ``unit_sum += sum_n unit_weight[n, u] * maps[n, :, :, u]`` (the weights are
  ``1 / K`` for each unit's top-K images, 0 elsewhere: the per-unit mean map);
* ``class_sum += sum_n class_weight[n, k] * maps[n]`` (``1 / count`` of image
  n's predicted class: the per-class mean map).

The sums are ``psum``-ed over devices, so with ``jax.distributed`` they cover
every process's images; the per-image rows are gathered to every process and
the maps stay sharded (each process writes its own rows of the grid).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxviz.engine.perturb import kept_units, mask_weighted_sum_of_chunk, perturbed_pairs

__all__ = ["MapSpec", "base_program", "step_program"]


@dataclasses.dataclass(frozen=True)
class MapSpec:
    """How a method turns the outputs of one image's masks into its map (static, hashable).

    Attributes:
      method: the method's registered name (progress bars, records).
      reduce: ``"difference"`` (one map cell per mask, row-major: occlusion, ablation) or
        ``"weighted_sum"`` (each mask's output over the pixels it keeps: RISE), as ``RunFamily.reduce``.
      generate: the masks' generator (``MaskFamily.generate``); it must not
        depend on the image index (the masks are shared by all images).
      count: masks per image.
      map_shape: (R, C) of one image's map.
      scale: factor on the weighted sum.
      sub_chunk: (image, mask) pairs per device per ``f`` call.
      materialize: as in ``occlude``.
    """

    method: str
    reduce: str
    generate: Callable
    count: int
    map_shape: tuple[int, int]
    scale: float = 1.0
    sub_chunk: int = 256
    materialize: bool = True


def _local_maps(spec: MapSpec, f, units, per_image_fill, params, x, fills, data, base):
    """Maps (b, R, C, U) of one device's images ``x`` (b, H, W, C) whose unperturbed outputs are ``base`` (b, U)."""
    b, h, w = x.shape[:3]
    count, size = spec.count, spec.sub_chunk
    pairs = b * count
    ks = jnp.arange(-(-pairs // size) * size, dtype=jnp.int32).reshape(-1, size)

    def outputs(k):
        valid = k < pairs
        xs, masks, image = perturbed_pairs(x, fills, per_image_fill, data, spec.generate, count, jnp.where(valid, k, 0),
                                      spec.materialize)
        return kept_units(f(params, xs), units), masks, image, valid

    if spec.reduce == "weighted_sum":
        def accumulate(acc, k):
            out, masks, image, valid = outputs(k)
            keep = (1 - masks) * valid[:, None, None]
            slot = jax.nn.one_hot(image, b, dtype=out.dtype) * valid[:, None]
            return acc + mask_weighted_sum_of_chunk(keep, out, slot), None

        acc, _ = jax.lax.scan(accumulate, jnp.zeros((b, h, w, base.shape[-1]), jnp.float32), ks)
        return acc * jnp.float32(spec.scale)
    out = jax.lax.map(lambda k: outputs(k)[0], ks).reshape(-1, base.shape[-1])[:pairs]
    maps = base[:, None] - out.reshape(b, count, -1)  # positive where the mask lowers f
    return maps.reshape(b, *spec.map_shape, -1)


@functools.lru_cache(maxsize=32)
def step_program(spec: MapSpec, f: Callable, units: tuple[int, ...] | None, to_input: Callable, mesh: Mesh,
                 per_image_fill: bool, keep_maps: bool) -> Callable:
    """``step(params, images, base, fills, data, unit_weight, class_weight, unit_sum, class_sum)``.

    Args (global shapes; B is a multiple of the device count):
      images: uint8 (B, H, W, C), sharded; base: f of the images (B, U) from
      the first pass, sharded; fills: (B, H, W, C) sharded when
      ``per_image_fill``, else (H, W, C) replicated; unit_weight (B, U) and
      class_weight (B, K) sharded; unit_sum (U, R * C) and class_sum
      (K, U, R * C) replicated.

    Returns:
      ``(unit_sum, class_sum, max (B, U), argmax (B, U) int32)``, replicated,
      plus ``maps`` (B, R, C, U) sharded when ``keep_maps``.
    """
    fill_spec = P("batch") if per_image_fill else P()

    def local(params, images, base, fills, data, unit_weight, class_weight, unit_sum, class_sum):
        maps = _local_maps(spec, f, units, per_image_fill, params, to_input(images), fills, data, base)
        flat = maps.reshape(maps.shape[0], -1, maps.shape[-1])  # (b, positions, U)
        peak, where = flat.max(axis=1), flat.argmax(axis=1).astype(jnp.int32)
        unit_sum = unit_sum + jax.lax.psum(
            jnp.einsum("bu,bpu->up", unit_weight, flat, precision="highest"), "batch")
        class_sum = class_sum + jax.lax.psum(
            jnp.einsum("bk,bpu->kup", class_weight, flat, precision="highest"), "batch")
        rows = [jax.lax.all_gather(a, "batch", tiled=True) for a in (peak, where)]
        return (unit_sum, class_sum, *rows, *((maps,) if keep_maps else ()))

    out_specs = (P(), P(), P(), P(), *((P("batch"),) if keep_maps else ()))
    return jax.jit(jax.shard_map(local, mesh=mesh, out_specs=out_specs,
                                 in_specs=(P(), P("batch"), P("batch"), fill_spec, P(), P("batch"), P("batch"), P(), P()),
                                 check_vma=False))


@functools.lru_cache(maxsize=32)
def base_program(f: Callable, units: tuple[int, ...] | None, classify: Callable | None, to_input: Callable,
                 mesh: Mesh) -> Callable:
    """``(params, images uint8 (B, H, W, C)) -> (base (B, U), predicted class int32 (B,))``, replicated
    (``predicted`` is 0 without ``classify``)."""

    def local(params, images):
        x = to_input(images)
        base = kept_units(f(params, x), units)
        predicted = (jnp.zeros(x.shape[0], jnp.int32) if classify is None
                     else jnp.argmax(classify(params, x), axis=-1).astype(jnp.int32))
        return tuple(jax.lax.all_gather(a, "batch", tiled=True) for a in (base, predicted))

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P(), P()), check_vma=False))
