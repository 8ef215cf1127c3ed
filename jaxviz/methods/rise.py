"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das and Saenko, BMVC 2018).

The saliency of pixel ``(y, x)`` for an output ``f_u`` is the expected output
when the pixel is kept, over random masks that keep each pixel with
probability ``p``::

    S[n, y, x, u] = sum_i f_u(x_n kept by M_i) * M_i[y, x] / (num_masks * p)

where "kept by M" is ``x * M + fill * (1 - M)``. The masks (the paper's
construction): a random binary grid of ``cells x cells`` cells, each kept with
probability ``p``, upsampled bilinearly to ``(cells + 1) * ceil(H / cells)``
by ``(cells + 1) * ceil(W / cells)`` pixels, then a crop of H x W at a random
shift in ``[0, ceil(H / cells)) x [0, ceil(W / cells))``. Mask ``i`` is made on
the device from ``jax.random.fold_in(jax.random.key(seed), i)`` (the same masks
for every image), so no (num_masks, H, W) array exists anywhere and any
``num_masks`` runs in constant memory: the engine's ``mask_weighted_sum``
accumulates the sum in one (N, H, W, units) array on the device.

The upsampling is ``jax.image.resize(grid, shape, "linear")``: half-pixel
centres (output pixel ``o`` samples the grid at ``(o + 0.5) * cells / size -
0.5``), the coordinate clamped to the grid at the borders (no reflection), so
the outer half cell is flat. The paper's code uses scikit-image's
``resize(order=1, mode="reflect")``, which differs only in that border half
cell (the crop hides most of it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, check_int, check_pair_count, check_seed
from jaxviz.engine.inputs import check_x
from jaxviz.engine.perturb import BLUR_SIGMA, MaskFamily, mask_weighted_sum, prepare
from jaxviz.methods.base import Attribution, Explained, Method, RunFamily, option, select_targets
from jaxviz.methods.occlusion import FILL_HELP

__all__ = ["METHOD", "NUM_MASKS", "Rise", "RiseOptions", "check_keep_probability", "rise", "rise_generator", "rise_masks",
           "seed_key"]

NUM_MASKS = 4000  # rise's default number of random masks (the paper: 4000 to 8000 for one map)


@dataclasses.dataclass(frozen=True)
class Rise:
    """The result of ``rise``.

    Attributes:
      maps: float32 (N, H, W, *out): the saliency of every pixel for every kept output.
      base: f on the unmasked images, (N, *out).
      num_masks: masks averaged over.
      p: keep probability the sum was normalised by (the mean of user masks).
      chunk_size: (image, mask) pairs per compiled call in this run.
      units: the kept indices of f's last output axis (``None``: all).
    """

    maps: np.ndarray
    base: np.ndarray
    num_masks: int
    p: float
    chunk_size: int
    units: tuple[int, ...] | None = None

    def pixel_map(self, targets: Any = None) -> np.ndarray:
        """``maps``, or with ``targets`` (int (N,): outputs of f, among the kept ``units``) each image's map of
        its target, (N, H, W)."""
        return self.maps if targets is None else select_targets(self.maps, targets, self.units)


# --------------------------------------------------------------------------- masks on the device


def _keep_mask(data: Any, index: jax.Array, *, cells: int, shape: tuple[int, int]) -> jax.Array:
    """RISE keep mask ``index`` (1 = kept), float32 (H, W), from ``data = (key, p)``."""
    key, p = data
    h, w = shape
    ch, cw = -(-h // cells), -(-w // cells)
    grid_key, shift_key = jax.random.split(jax.random.fold_in(key, index))
    grid = jax.random.bernoulli(grid_key, p, (cells, cells)).astype(jnp.float32)
    up = jax.image.resize(grid, ((cells + 1) * ch, (cells + 1) * cw), "linear")
    shift = jax.random.randint(shift_key, (2,), 0, jnp.array([ch, cw]))
    return jax.lax.dynamic_slice(up, (shift[0], shift[1]), (h, w))


def _rise_mask(data: Any, image: jax.Array, index: jax.Array, *, cells: int, shape: tuple[int, int]) -> jax.Array:
    """The engine's perturbation mask (1 = filled) of RISE mask ``index``, for any image."""
    return 1 - _keep_mask(data, index, cells=cells, shape=shape)


def _given_mask(masks: jax.Array, image: jax.Array, index: jax.Array) -> jax.Array:
    """The engine's perturbation mask of user keep mask ``masks[index]``, for any image."""
    return 1 - masks[index]


@functools.lru_cache(maxsize=64)
def rise_generator(cells: int, shape: tuple[int, int]) -> Callable:
    return functools.partial(_rise_mask, cells=cells, shape=shape)


@functools.lru_cache(maxsize=16)
def _keep_program(cells: int, shape: tuple[int, int]) -> Callable:
    keep = functools.partial(_keep_mask, cells=cells, shape=shape)
    return jax.jit(lambda data, indices: jax.vmap(keep, in_axes=(None, 0))(data, indices))


# --------------------------------------------------------------------------- checks


def check_keep_probability(p: Any) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError("p", f"expected a keep probability in (0, 1], got {p!r}")
    if not 0 < p <= 1:  # False for NaN
        raise ArgumentError("p", f"expected a keep probability in (0, 1], got {p!r}")
    return float(p)


def _check_masks(masks: Any, h: int, w: int) -> np.ndarray:
    if not hasattr(masks, "shape") or not hasattr(masks, "dtype"):
        raise ArgumentTypeError("masks", f"expected a float array (M, {h}, {w}) of keep masks in [0, 1], "
                        f"got {type(masks).__name__}")
    arr = np.asarray(masks)
    if arr.dtype.kind not in "biuf":
        raise ArgumentTypeError("masks", f"expected a float array (M, {h}, {w}) of keep masks in [0, 1], got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[1:] != (h, w) or arr.shape[0] < 1:
        raise ArgumentError("masks", f"expected shape (M, {h}, {w}) with M >= 1 (the images' size), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ArgumentError("masks", "contains NaN or infinite values")
    if arr.min() < 0 or arr.max() > 1:
        raise ArgumentError("masks", f"expected keep masks in [0, 1], got values in [{arr.min():g}, {arr.max():g}]")
    if arr.max() == 0:
        raise ArgumentError("masks", "every mask is all zeros (nothing kept): the saliency would be 0 / 0")
    return arr


# --------------------------------------------------------------------------- entry points


def rise_masks(height: int, width: int, *, num_masks: int, cells: int = 7, p: float = 0.5, seed: int = 0,
               start: int = 0) -> np.ndarray:
    """The keep masks ``rise`` uses, made by the same device generator (to look at them, or to reuse them).

    Args:
      height, width: image size (H, W).
      num_masks: how many masks.
      cells, p, seed: as in ``rise``.
      start: index of the first mask (masks ``start .. start + num_masks - 1``).

    Returns:
      float32 (num_masks, H, W) in [0, 1], 1 = pixel kept.
    """
    h, w = check_int(height, "height", 1), check_int(width, "width", 1)
    num_masks = check_int(num_masks, "num_masks", 1, 2**31 - 1)
    start = check_int(start, "start", 0, 2**31 - num_masks)  # mask indices are int32
    cells, p = check_int(cells, "cells", 1, min(h, w)), check_keep_probability(p)
    key = seed_key(seed)
    indices = jnp.arange(start, start + num_masks, dtype=jnp.int32)
    return np.asarray(_keep_program(cells, (h, w))((key, jnp.float32(p)), indices))


def seed_key(seed: Any) -> jax.Array:
    """``jax.random.key(seed)`` for a seed in ``[0, 2**32)`` (``check_seed``: larger or negative seeds would wrap
    around silently to another seed's stream)."""
    return jax.random.key(check_seed(seed))


def _checked_options(num_masks: Any, cells: Any, p: Any, seed: Any,
                     size: tuple[int, int]) -> tuple[int, int, float, int]:
    """RISE's random-mask options checked, the one rule for ``rise``, its registry record and its dataset runs."""
    seed = check_seed(seed)
    num_masks = check_int(num_masks, "num_masks", 1)
    cells = check_int(cells, "cells", 1, min(size))
    return num_masks, cells, check_keep_probability(p), seed


def _random_masks(num_masks: int, cells: int, p: float, seed: int, size: tuple[int, int]) -> MaskFamily:
    """The random masks of checked options, made on the device (``rise_generator``)."""
    return MaskFamily(rise_generator(cells, size), (seed_key(seed), jnp.float32(p)), num_masks, (cells, size),
                      "num_masks")


def rise(
    f: Callable,
    x: Any,
    *,
    num_masks: int | None = None,
    cells: int = 7,
    p: float = 0.5,
    seed: int = 0,
    masks: Any = None,
    fill: Any = 0.0,
    params: Any = None,
    units: Sequence[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> Rise:
    """RISE saliency maps of ``f`` for every image (see the module docstring).

    Args:
      f: a pure JAX function ``f(x) -> (N, *out)``, or ``f(params, x)`` when
        ``params`` is given, as in ``occlude``; the same function object across
        calls reuses the compiled program.
      x: float (N, H, W, C), in the space ``f`` expects.
      num_masks: random masks to average over (default ``NUM_MASKS``, 4000; the paper: 4000 to 8000);
        with ``masks``, None or their number M (another count is refused).
      cells: grid cells per side, ``1 <= cells <= min(H, W)``.
      p: probability that a grid cell is kept, in (0, 1].
      seed: int; mask ``i`` comes from ``fold_in(key(seed), i)``, the same for every image.
      masks: optional float (M, H, W) keep masks in [0, 1] to use instead of
        random ones; then ``num_masks = M`` and ``p`` is their mean
        (``cells``, ``p`` and ``seed`` are unused).
      fill: what replaces the removed pixels, as in ``occlude``: a number,
        per-channel (C,), (H, W, C) or per-image (N, H, W, C) values, or
        ``"blur"`` (Gaussian blur, sigma 3 pixels).
      params: optional first argument of ``f``.
      units: indices (or a boolean mask) of f's last output axis to keep (default all).
      chunk_size, memory_budget, devices: as in ``occlude`` (pairs are (image, mask)).
      progress: show a progress bar.

    Returns:
      ``Rise`` with ``maps`` float32 (N, H, W, *out) and ``base`` (N, *out),
      out's last axis cut to ``units``.

    Raises:
      TypeError / ValueError naming the argument, before anything is compiled.
    """
    x = check_x(x)
    if not callable(f):
        raise ArgumentTypeError("f", f"expected a callable, got {type(f).__name__}")
    h, w = x.shape[1:3]
    if masks is None:
        num_masks, cells, p, seed = _checked_options(NUM_MASKS if num_masks is None else num_masks, cells, p, seed,
                                                     (h, w))
        check_pair_count(x.shape[0], num_masks, "num_masks", "masks")  # before f is traced
        family = _random_masks(num_masks, cells, p, seed, (h, w))
    else:
        check_seed(seed)  # unused with given masks, but a bad one is still refused
        given = _check_masks(masks, h, w)
        if num_masks is not None and (isinstance(num_masks, (bool, np.bool_)) or num_masks != given.shape[0]):
            raise ArgumentError("num_masks", f"expected None with masks (their number, {given.shape[0]}, is used), "
                             f"got {num_masks!r}")
        num_masks, p = given.shape[0], float(given.mean(dtype=np.float64))
        family = MaskFamily(_given_mask, jnp.asarray(given), num_masks)
    prepared = prepare(f, x, fill=fill, units=units, params=params, blur_sigma=BLUR_SIGMA)
    base, sums, size = mask_weighted_sum(prepared, family, chunk_size=chunk_size, memory_budget=memory_budget,
                                         devices=devices, progress=progress and "rise")
    maps = (sums / np.float32(num_masks * p)).astype(np.float32)
    return Rise(maps, base, num_masks, p, size, prepared.units)


# --------------------------------------------------------------------------- the registered method


@dataclasses.dataclass(frozen=True)
class RiseOptions:
    """RISE as an attribution method (``jaxviz attribute --method rise``, ``compare_methods``, ``run_dataset``)."""

    num_masks: int = option(NUM_MASKS, "random masks")
    cells: int = option(7, "mask grid cells per side")
    p: float = option(0.5, "probability that a cell is kept")
    seed: int = option(0, "seed of the random masks (and SmoothGrad's noise), in [0, 2**32)")
    fill: Any = option(0.0, FILL_HELP)


def _check(explained: Explained, options: RiseOptions) -> None:
    _checked_options(options.num_masks, options.cells, options.p, options.seed,
                     explained.network.input_spec.shape[:2])


def _run(explained: Explained, x: Any, *, targets: np.ndarray, options: RiseOptions, execution: dict) -> Attribution:
    units = tuple(int(u) for u in np.unique(targets))  # only the explained outputs are kept
    result = rise(explained.f, x, num_masks=options.num_masks, cells=options.cells, p=options.p, seed=options.seed,
                  fill=options.fill, units=units, params=explained.network.variables, **execution)
    return Attribution(result.pixel_map(targets), targets, "rise", dataclasses.asdict(options), result)


def _run_family(options: RiseOptions, image_shape: tuple[int, int, int]) -> RunFamily:
    h, w, _ = image_shape
    num_masks, cells, p, seed = _checked_options(options.num_masks, options.cells, options.p, options.seed, (h, w))
    return RunFamily(_random_masks(num_masks, cells, p, seed, (h, w)), (h, w), "weighted_sum", 1.0 / (num_masks * p),
                     {"num_masks": num_masks, "cells": cells, "p": p, "seed": seed})


def _describe(options: RiseOptions) -> str:
    return f"RISE ({options.num_masks} random masks)"


METHOD = Method("rise", "RISE", "perturbation", RiseOptions, _run, _check, _describe, run_family=_run_family)
