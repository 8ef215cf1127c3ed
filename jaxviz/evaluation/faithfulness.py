"""Faithfulness of attribution maps: deletion / insertion curves and MuFidelity.

Both metrics score any (N, H, W) attribution map (from jaxviz or another
library) by perturbing the images it explains and watching ``f``; both are
clients of the perturbation engine (``jaxviz.engine.perturb``), so every
perturbed copy of every image runs in the same fused, chunked, sharded batch
and the masks are generated on the device from a compact description.

* ``deletion_curve`` (Petsiuk et al., "RISE", BMVC 2018): pixels are ranked
  by attribution, descending, ties to the lower flat index ``y * W + x`` (a
  stable argsort of ``-attribution``, computed once on the host). At step
  ``k = 0 .. steps`` the first ``count(k)`` pixels are replaced by the fill
  (deletion), or the image starts as the fill and those pixels are revealed
  (insertion); ``curve[k] = f(x_k)``. ``count(k) = floor(k * H * W / steps +
  1/2)``: rounding half *up*, computed exactly in integers as ``(2 k H W +
  steps) // (2 steps)``, so ``count(0) = 0``, ``count(steps) = H * W`` and
  counts never decrease. The AUC is the trapezoidal rule over the fractions
  ``k / steps`` in [0, 1].
* ``mu_fidelity`` (Bhatt et al., IJCAI 2020): the image is cut into a regular
  ``grid x grid`` lattice (pixel ``(y, x)`` is in cell ``(y * grid // H) *
  grid + x * grid // W``); ``num_subsets`` random subsets of ``max(1,
  floor(subset_fraction * grid**2 + 1/2))`` cells are drawn from
  ``jax.random.fold_in(jax.random.key(seed), index)`` (a permutation of the
  cells, first ones kept), the same for every image. The score is the Pearson
  correlation, over the subsets, between the attribution summed over a subset
  and the drop ``f(x) - f(x with the subset filled)``.

Outputs: ``targets`` (N,) ints pick, for image n, output ``targets[n]`` of f (an
index of f's outputs, which must be among the kept ``units``: the one meaning of
targets, ``jaxviz.methods.base``); without them
every kept output is scored. All outputs are computed either way (one compiled
program whatever the targets; pass ``units`` to compute fewer).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, check_int, check_real, check_seed
from jaxviz.engine.inputs import check_x
from jaxviz.engine.perturb import BLUR_SIGMA, MaskFamily, perturbed_outputs, prepare
from jaxviz.methods.ablation import grid_segments
from jaxviz.methods.base import target_positions

__all__ = ["Curve", "MuFidelity", "check_mu_fidelity_lattice", "check_steps", "deletion_curve", "insertion_curve", "mu_fidelity"]

MODES = ("deletion", "insertion")
STEPS = 100  # deletion / insertion steps by default (at most the pixels of an image)
_F32_RESOLUTION = 8 * float(np.finfo(np.float32).eps)  # spread below this * scale: constant (see _pearson)
_F64_RESOLUTION = 1e-9


@dataclasses.dataclass(frozen=True)
class Curve:
    """The result of ``deletion_curve`` / ``insertion_curve``.

    Attributes:
      curve: float32 ``f(x_k)``: (N, steps + 1) with ``targets``, else
        (N, steps + 1, *kept).
      auc: float64 trapezoidal area under ``curve`` over ``fractions``: (N,)
        with ``targets``, else (N, *kept).
      mode: ``"deletion"`` or ``"insertion"``.
      steps: number of steps (``curve`` has ``steps + 1`` points).
      fractions: float64 (steps + 1,), ``k / steps``, the AUC's x axis.
      counts: int (steps + 1,), pixels deleted / revealed at each step.
      units: the kept indices of f's last output axis (``None``: all).
      chunk_size: (image, step) pairs per compiled call in this run.
    """

    curve: np.ndarray
    auc: np.ndarray
    mode: str
    steps: int
    fractions: np.ndarray
    counts: np.ndarray
    units: tuple[int, ...] | None = None
    chunk_size: int | None = None


@dataclasses.dataclass(frozen=True)
class MuFidelity:
    """The result of ``mu_fidelity``.

    Attributes:
      score: float64 Pearson correlation in [-1, 1]: (N,) with ``targets``,
        else (N, *kept); 0 where either vector is constant.
      drops: float32 ``f(x) - f(x with the subset filled)``: (N, num_subsets)
        with ``targets``, else (N, num_subsets, *kept).
      attribution_sums: float64 (N, num_subsets), attribution summed over
        each subset's pixels.
      subsets: bool (num_subsets, grid * grid), the cells of each subset.
    """

    score: np.ndarray
    drops: np.ndarray
    attribution_sums: np.ndarray
    subsets: np.ndarray


# --------------------------------------------------------------------------- checks


def _check_attribution(attribution: Any, x: jax.Array) -> np.ndarray:
    """(N, H, W) finite real values, as float64."""
    n, h, w, c = x.shape
    if not hasattr(attribution, "shape") or not hasattr(attribution, "dtype"):
        hint = " (convert it with .numpy() first)" if type(attribution).__module__.startswith("torch") else ""
        raise ArgumentTypeError("attribution", f"expected an array (N, H, W) = ({n}, {h}, {w}), "
                        f"got {type(attribution).__name__}{hint}")
    shape = tuple(attribution.shape)
    if shape != (n, h, w):
        hint = ""
        if len(shape) == 4 and shape[:3] == (n, h, w):
            hint = (f"; one map per image is needed: sum the last axis (attribution.sum(-1)) if it holds the "
                    f"{c} channels, or pick one unit / output")
        raise ArgumentError("attribution", f"expected shape (N, H, W) = ({n}, {h}, {w}) matching x, got {shape}{hint}")
    dtype = attribution.dtype  # bool is neither; jnp also knows bfloat16
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ArgumentTypeError("attribution", f"expected real numbers (float or int), got dtype {dtype}")
    values = np.asarray(attribution, np.float64)
    bad = int(np.size(values) - np.isfinite(values).sum())
    if bad:
        raise ArgumentError("attribution", f"expected finite values, got {bad} NaN or infinite value(s)")
    return values


def _check_targets(targets: Any, n: int) -> np.ndarray | None:
    if targets is None:
        return None
    arr = np.asarray(targets)
    if arr.shape != (n,) or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ArgumentError("targets", f"expected {n} integers (one output index per image) or None, "
                         f"got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


def _target_positions(targets: np.ndarray | None, p) -> np.ndarray | None:
    """The explained outputs (indices of f's outputs, among the kept ``units``) as positions on the kept axis."""
    if targets is None:
        return None
    if not p.kept:
        raise ArgumentError("targets", "f returns one value per image (shape (N,)), there is no output to pick; "
                                       "pass targets=None")
    return target_positions(targets, len(targets), p.units, p.kept[-1])


def _pick(values: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """``values[n, :, ..., targets[n]]`` for (N, M, *kept) values, or all of them."""
    if targets is None:
        return values
    index = targets.reshape((len(targets),) + (1,) * (values.ndim - 1))
    return np.take_along_axis(values, index, axis=-1)[..., 0]


# --------------------------------------------------------------------------- deletion / insertion


def _ranked_mask(data: tuple, image: jax.Array, index: jax.Array, *, shape: tuple[int, int],
                 insertion: bool) -> jax.Array:
    """Step ``index`` of image ``image``: 1 on the pixels that are the fill at that step."""
    ranks, counts = data  # (N, H * W) int32 position of each pixel in the order; (steps + 1,) int32
    rank = ranks[image].reshape(shape)
    filled = rank >= counts[index] if insertion else rank < counts[index]
    return filled.astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def _ranked_generator(shape: tuple[int, int], insertion: bool) -> Callable:
    return functools.partial(_ranked_mask, shape=shape, insertion=insertion)


def _ranks(attribution: np.ndarray) -> np.ndarray:
    """(N, H * W) int32: 0 for the pixel of highest attribution, ties to the lower flat index."""
    flat = attribution.reshape(attribution.shape[0], -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty(flat.shape, np.int32)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1], dtype=np.int32)[None], axis=1)
    return ranks


def _step_counts(pixels: int, steps: int) -> np.ndarray:
    """``floor(k * pixels / steps + 1/2)`` for k = 0 .. steps, exactly (round half up)."""
    k = np.arange(steps + 1, dtype=np.int64)
    return ((2 * k * pixels + steps) // (2 * steps)).astype(np.int32)


def check_steps(steps: Any, pixels: int) -> int:
    """Deletion / insertion ``steps`` as an int in ``[1, pixels]``: more steps than pixels only repeat counts."""
    return check_int(steps, "steps", 1, pixels, f" (at most the {pixels} pixels of an image: more steps would "
                                                "repeat the same pixel counts)")


def deletion_curve(
    f: Callable,
    x: Any,
    attribution: Any,
    *,
    mode: str = "deletion",
    steps: int | None = None,
    fill: Any = 0.0,
    params: Any = None,
    targets: Sequence[int] | np.ndarray | None = None,
    units: Sequence[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    blur_sigma: float = BLUR_SIGMA,
) -> Curve:
    """Deletion (or insertion) curve of ``f`` along each image's attribution ranking.

    Args:
      f: pure JAX ``f(x) -> (N, *out)``, or ``f(params, x)`` with ``params``
        (as in ``jaxviz.occlude``; reuse the same object to reuse the program).
      x: float (N, H, W, C) model input.
      attribution: real (N, H, W), one map per image (higher = more important).
      mode: ``"deletion"`` (fill the top pixels) or ``"insertion"`` (start from
        the fill and reveal the top pixels).
      steps: number of steps, in [1, H * W] (default ``STEPS``, 100, or H * W on smaller
        images); step k fills / reveals ``count(k) =
        floor(k * H * W / steps + 1/2)`` pixels.
      fill: as in ``occlude``: a number, per-channel (C,), image (H, W, C) or
        per-image (N, H, W, C) values, or ``"blur"`` (Petsiuk's insertion canvas).
      params: optional first argument of ``f``.
      targets: optional int (N,), the output of the kept last axis to follow
        per image.
      units: indices of f's last output axis to keep (default all).
      chunk_size, memory_budget, devices, progress: as in ``occlude``.
      blur_sigma: Gaussian sigma in pixels for ``fill="blur"``.

    Returns:
      ``Curve``: ``curve`` (N, steps + 1[, *kept]) and ``auc`` (N[, *kept]).

    Raises:
      TypeError / ValueError naming the argument, before anything is compiled.
    """
    if mode not in MODES:
        raise ArgumentError("mode", f"expected one of {MODES}, got {mode!r}")
    x = check_x(x)
    pixels = x.shape[1] * x.shape[2]
    steps = min(STEPS, pixels) if steps is None else check_steps(steps, pixels)
    ranks = _ranks(_check_attribution(attribution, x))
    targets = _check_targets(targets, x.shape[0])
    p = prepare(f, x, fill=fill, units=units, params=params, blur_sigma=blur_sigma)
    targets = _target_positions(targets, p)
    h, w = x.shape[1:3]
    counts = _step_counts(h * w, steps)
    family = MaskFamily(_ranked_generator((h, w), mode == "insertion"),
                        (jnp.asarray(ranks), jnp.asarray(counts)), steps + 1, ((h, w), mode))
    _, outputs, size = perturbed_outputs(p, family, difference=False, chunk_size=chunk_size,
                                         memory_budget=memory_budget, devices=devices, progress=progress and mode)
    curve = _pick(outputs, targets)
    values = curve.astype(np.float64)
    auc = (values[:, 1:].sum(axis=1) + values[:, :-1].sum(axis=1)) / (2 * steps)  # trapezoids of width 1 / steps
    return Curve(curve, auc, mode, steps, np.arange(steps + 1) / steps, counts, p.units, size)


def insertion_curve(f: Callable, x: Any, attribution: Any, **options: Any) -> Curve:
    """``deletion_curve(f, x, attribution, mode="insertion", **options)``: the image starts as the fill
    and the pixels are revealed in attribution order."""
    if "mode" in options:
        raise ArgumentTypeError("insertion_curve", "got an unexpected keyword argument 'mode' (use deletion_curve)")
    return deletion_curve(f, x, attribution, mode="insertion", **options)


# --------------------------------------------------------------------------- MuFidelity


def _subset_cells(key_data: jax.Array, index: jax.Array, *, cells: int, size: int) -> jax.Array:
    """bool (cells,): subset ``index``, the first ``size`` of a permutation drawn from ``fold_in(key, index)``."""
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), index)
    return jnp.zeros(cells, bool).at[jax.random.permutation(key, cells)[:size]].set(True)


def _subset_mask(data: tuple, image: jax.Array, index: jax.Array, *, cells: int, size: int) -> jax.Array:
    """Mask ``index`` (any image): 1 on the pixels of the subset's cells."""
    cell_map, key_data = data  # (H, W) int32, the key's uint32 data
    return _subset_cells(key_data, index, cells=cells, size=size)[cell_map].astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def _subset_generator(cells: int, size: int) -> Callable:
    return functools.partial(_subset_mask, cells=cells, size=size)


@functools.lru_cache(maxsize=64)
def _subsets_program(cells: int, size: int, count: int) -> Callable:
    draw = functools.partial(_subset_cells, cells=cells, size=size)
    return jax.jit(lambda key_data: jax.vmap(draw, in_axes=(None, 0))(key_data, jnp.arange(count, dtype=jnp.int32)))


def _pearson(a: np.ndarray, d: np.ndarray, d_scale: np.ndarray) -> np.ndarray:
    """Correlation over axis 1 of ``a`` (N, S) with each column of ``d`` (N, S, *rest); 0 where either is constant.

    "Constant" is a spread (standard deviation) at most 8 float32 eps of ``d_scale``
    (N, *rest) for the float32 drops, or 1e-9 of ``max |a|`` for the float64 sums:
    below that, the variation is rounding, and its correlation would be noise.
    """
    a = a.reshape(a.shape + (1,) * (d.ndim - 2))
    ac, dc = a - a.mean(axis=1, keepdims=True), d - d.mean(axis=1, keepdims=True)
    sa, sd = np.sqrt((ac**2).mean(axis=1)), np.sqrt((dc**2).mean(axis=1))
    constant = (sa <= _F64_RESOLUTION * np.abs(a).max(axis=1)) | (sd <= _F32_RESOLUTION * d_scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ac * dc).mean(axis=1) / (sa * sd)
    return np.where(constant, 0.0, np.clip(r, -1.0, 1.0))


def check_mu_fidelity_lattice(grid: Any, num_subsets: Any, height: int, width: int) -> tuple[int, int]:
    """MuFidelity's ``grid`` (cells per side, at most the image size) and ``num_subsets`` (>= 2), as ints."""
    grid = check_int(grid, "grid", 1, min(height, width), " (cells per side, at most the image size)")
    return grid, check_int(num_subsets, "num_subsets", 2)


def mu_fidelity(
    f: Callable,
    x: Any,
    attribution: Any,
    *,
    grid: int = 8,
    subset_fraction: float = 0.2,
    num_subsets: int = 128,
    seed: int = 0,
    fill: Any = 0.0,
    params: Any = None,
    targets: Sequence[int] | np.ndarray | None = None,
    units: Sequence[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    blur_sigma: float = BLUR_SIGMA,
) -> MuFidelity:
    """MuFidelity: correlation between attribution mass and output drop over random cell subsets.

    Args:
      f, x, attribution, fill, params, targets, units, chunk_size,
        memory_budget, devices, progress, blur_sigma: as in ``deletion_curve``.
      grid: cells per side of the regular lattice, 1 <= grid <= min(H, W).
      subset_fraction: fraction of the ``grid**2`` cells in each subset, in
        (0, 1]; the subset size is ``max(1, floor(subset_fraction * grid**2 + 1/2))``.
      num_subsets: number of random subsets, >= 2.
      seed: int in [0, 2**32): subsets come from ``fold_in(jax.random.key(seed), i)``.

    Returns:
      ``MuFidelity``: ``score`` (N[, *kept]), ``drops`` (N, num_subsets[, *kept]),
      ``attribution_sums`` (N, num_subsets), ``subsets`` (num_subsets, grid**2).

    Raises:
      TypeError / ValueError naming the argument, before anything is compiled.
    """
    x = check_x(x)
    n, h, w, _ = x.shape
    grid, num_subsets = check_mu_fidelity_lattice(grid, num_subsets, h, w)
    subset_fraction = check_real(subset_fraction, "subset_fraction", 0.0, 1.0, low_open=True, high_open=False)
    seed = check_seed(seed)
    values = _check_attribution(attribution, x)
    targets = _check_targets(targets, n)
    p = prepare(f, x, fill=fill, units=units, params=params, blur_sigma=blur_sigma)
    targets = _target_positions(targets, p)
    cells = grid * grid
    size = max(1, int(np.floor(float(subset_fraction) * cells + 0.5)))
    cell_map = grid_segments(h, w, cells=grid)  # the regular lattice, as feature ablation's grid
    key_data = jax.random.key_data(jax.random.key(seed))
    family = MaskFamily(_subset_generator(cells, size), (jnp.asarray(cell_map), key_data), num_subsets,
                        (cells, size))
    base, drops, _ = perturbed_outputs(p, family, difference=True, chunk_size=chunk_size,
                                       memory_budget=memory_budget, devices=devices,
                                       progress=progress and "mufidelity")
    subsets = np.asarray(_subsets_program(cells, size, num_subsets)(key_data))
    index = (cell_map.reshape(1, -1) + cells * np.arange(n)[:, None]).ravel()
    cell_sums = np.bincount(index, weights=values.ravel(), minlength=n * cells).reshape(n, cells)
    sums = cell_sums @ subsets.T.astype(np.float64)
    drops = _pick(drops, targets)
    base = base if targets is None else _pick(base[:, None], targets)[:, 0]
    scale = np.abs(base.astype(np.float64)) + np.abs(drops.astype(np.float64)).max(axis=1)
    return MuFidelity(_pearson(sums, drops.astype(np.float64), scale), drops, sums, subsets)
