"""The gradient engine: gradients of ``f`` at many inputs made from every image, summed per image on the device.

Gradient methods differ only in which inputs they differentiate at and how
they weigh the gradients: saliency at the image itself, integrated gradients
at ``n_steps`` points on the path from a baseline, SmoothGrad at noisy
copies. A ``PathFamily`` names a pure generator
``generate(data, image, image_index, sample_index) -> (input, weight)`` and
the compact ``data`` it reads (path coefficients, a PRNG key), and
``gradient_sums`` evaluates ``sum_k weight_k * grad f_u(input_k)`` for every
image and kept output ``u`` (and, on request, the sum of squares) over fixed-size padded
chunks of (image, sample) pairs, sharded over devices, the sums accumulated
on the device. Inputs are made inside the compiled chunk, so no
(pairs, H, W, C) array exists on the host.

Which outputs are differentiated:

* ``targets`` (N,): one output per image (Captum's ``target``): one backward pass;
* ``units``: several outputs per image: one forward pass and the backward
  pass ``vmap``-ped over the units' one-hot cotangents (``jax.vjp``), never one
  call per unit;
* a scalar ``f`` (shape (N,)): its gradient.

``params`` may hold several parameter sets stacked on a leading axis
(``stacked=True``): the chunk is then ``vmap``-ped over them, so a sanity check
evaluates every randomized model in one program.

Each image's gradient is that of its own output: ``f`` must treat the images
of a batch independently (inference mode), as every jaxviz engine assumes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxviz._batching import batch_sharding, to_host
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_pair_count
from jaxviz.engine.inputs import check_x, unit_indices
from jaxviz.engine.perturb import _with_params
from jaxviz.engine.plan import abstract, chunk_size_for, probe, signature

__all__ = ["GradientPlan", "PathFamily", "check_targets", "gradient_sums", "plan_gradients", "readout",
           "unit_cotangents"]


@dataclasses.dataclass(frozen=True)
class PathFamily:
    """``count`` inputs per image at which ``f`` is differentiated, made on the device.

    Attributes:
      generate: pure ``generate(data, image (H, W, C), image_index, sample_index) ->
        (input (H, W, C), weight ())`` for int32 scalar indices; a module-level
        function or an ``lru_cache``-d partial (it keys the compiled-program cache).
      data: pytree of arrays it reads (per-image arrays are indexed by ``image_index``).
      count: inputs per image.
      argument: the argument that sets ``count`` (``n_steps``, ``nt_samples``), which the engine's
        int32 pair-count error names.
    """

    generate: Callable
    data: Any
    count: int
    argument: str = "count"


@dataclasses.dataclass(frozen=True)
class GradientPlan:
    """Checked arguments of a gradient method: what is differentiated, for which outputs.

    Attributes:
      f: ``f(params, x) -> (N,)`` or ``(N, K)``.
      params: its first argument.
      images: float (N, H, W, C).
      targets: int32 (N,) one output per image, or ``None``.
      units: the kept outputs (``None`` with ``targets`` or a scalar ``f``).
      width: K, f's outputs per image (0 for a scalar f).
      example_bytes: f's forward working memory per image.
    """

    f: Callable
    params: Any
    images: jax.Array
    targets: np.ndarray | None
    units: tuple[int, ...] | None
    width: int
    example_bytes: int

    @property
    def kept(self) -> int:
        """Gradients per (image, sample): the number of units, else 1."""
        return 1 if self.units is None else len(self.units)

    @property
    def mode(self) -> str:
        return "targets" if self.targets is not None else "units" if self.units is not None else "scalar"


def check_targets(targets: Any, n: int, width: int) -> np.ndarray:
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, (bool, np.bool_)):
        targets = np.full(n, int(targets))
    arr = np.asarray(targets) if hasattr(targets, "__len__") or hasattr(targets, "shape") else None
    if arr is None or arr.dtype == bool or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ArgumentTypeError("targets", f"expected an int or {n} ints (one output per image), got {targets!r}")
    if arr.shape != (n,):
        raise ArgumentError("targets", f"expected one output index per image, shape ({n},), got shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= width:
        raise ArgumentError("targets", f"expected indices in [0, {width}) of f's last output axis, got "
                         f"{arr.tolist()}")
    return arr.astype(np.int32)


@functools.lru_cache(maxsize=256)
def _output_dtype(fn: Callable, params_sig: Any, image_shape: tuple[int, ...], dtype: Any) -> np.dtype:
    """f's output dtype (cached like ``probe``: equal calls do not retrace; ``probe`` checked that f applies)."""
    out = jax.eval_shape(fn, abstract(params_sig), jax.ShapeDtypeStruct((2, *image_shape), dtype))
    return np.dtype(out.dtype)


def plan_gradients(f: Callable, x: Any, *, params: Any, targets: Any, units: Any,
                   params_sig: Any = None) -> GradientPlan:
    """Check the arguments every gradient method shares (TypeError / ValueError naming them).

    Args:
      f: ``f(x)``, or ``f(params, x)`` when ``params`` is given, -> (N,) or (N, K).
      x: float (N, H, W, C).
      params, targets, units: as in ``jaxviz.saliency``.
      params_sig: the signature of one parameter set when ``params`` stacks several.

    Returns:
      ``GradientPlan``; without ``targets`` and ``units``, a vector ``f`` keeps every unit.
    """
    images = check_x(x)
    if not callable(f):
        raise ArgumentTypeError("f", f"expected a callable, got {type(f).__name__}")
    fn = f if params is not None else _with_params(f)
    sig = signature(params) if params_sig is None else params_sig
    out_shape, example_bytes = probe(fn, True, sig, tuple(images.shape[1:]), images.dtype)
    out_dtype = _output_dtype(fn, sig, tuple(images.shape[1:]), images.dtype)
    if not jnp.issubdtype(out_dtype, jnp.floating):
        raise ArgumentTypeError("f", f"expected float outputs, got {out_dtype} (the gradient of an integer- or bool-valued "
                        "function is zero everywhere: return the scores before rounding or argmax)")
    if len(out_shape) > 1:
        raise ArgumentError("f", f"expected one value (N,) or a vector (N, K) per image, got outputs of shape "
                         f"(N, {', '.join(map(str, out_shape))}); reduce them first (for a network layer: "
                         "network.score_fn(layer) averages conv maps over (h, w))")
    width = out_shape[0] if out_shape else 0
    if targets is not None and units is not None:
        raise ValueError("targets, units: expected at most one of them (targets picks one output per image, "
                         "units keeps several for every image)")
    if not width and (targets is not None or units is not None):
        raise ValueError(f"{'targets' if targets is not None else 'units'}: f returns one value per image "
                         "(shape (N,)); there are no outputs to pick")
    if targets is not None:
        return GradientPlan(fn, params, images, check_targets(targets, images.shape[0], width), None, width,
                            example_bytes)
    if width:
        units = tuple(range(width)) if units is None else unit_indices(units, width)
    return GradientPlan(fn, params, images, None, units, width, example_bytes)


def unit_cotangents(mode: str, units: tuple[int, ...] | None, out: jax.Array, targets: jax.Array | None) -> jax.Array:
    """(U, chunk, *out) one-hot cotangents: one backward pass per kept unit, batched."""
    if mode == "scalar":
        return jnp.ones_like(out)[None]
    if mode == "targets":
        return jax.nn.one_hot(targets, out.shape[-1], dtype=out.dtype)[None]
    picks = jnp.eye(out.shape[-1], dtype=out.dtype)[jnp.asarray(units)]  # (U, K)
    return jnp.broadcast_to(picks[:, None, :], (len(units), *out.shape))


def _pair_gradients(f, generate, count, mode, units, params, images, targets, data, k):
    """Gradients (chunk, H, W, C, U) at the inputs of pairs ``k``, with their weights (chunk,)."""
    image_idx, sample_idx = k // count, k % count
    xs, weights = jax.vmap(generate, in_axes=(None, 0, 0, 0))(data, images[image_idx], image_idx, sample_idx)
    out, pullback = jax.vjp(lambda z: f(params, z), xs)
    cts = unit_cotangents(mode, units, out, None if targets is None else targets[image_idx])
    grads = jax.vmap(lambda ct: pullback(ct)[0])(cts)  # (U, chunk, H, W, C)
    return jnp.moveaxis(grads, 0, -1), weights, image_idx


@functools.lru_cache(maxsize=64)
def _sum_program(f, generate, count, mode, units, absolute, squares, stacked, sharding, chunk_size):
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def one_set(params, images, targets, data, start):
        pairs = images.shape[0] * count
        k = jax.lax.with_sharding_constraint(start + jnp.arange(chunk_size, dtype=jnp.int32), sharding)
        valid = k < pairs
        grads, weights, image_idx = _pair_gradients(f, generate, count, mode, units, params, images, targets,
                                                    data, jnp.where(valid, k, 0))
        grads = jnp.abs(grads) if absolute else grads
        w = jnp.where(valid, weights, 0).astype(grads.dtype)[:, None, None, None, None]  # padding adds nothing
        return image_idx, w * grads, (w * grads * grads if squares else None)

    def chunk(params, images, targets, data, acc, acc_sq, start):
        if stacked:
            image_idx, g, g2 = jax.vmap(one_set, in_axes=(0, None, None, None, None))(
                params, images, targets, data, start)
            image_idx = image_idx[0]
            acc = acc.at[:, image_idx].add(g)
            acc_sq = acc_sq if g2 is None else acc_sq.at[:, image_idx].add(g2)
        else:
            image_idx, g, g2 = one_set(params, images, targets, data, start)
            acc = acc.at[image_idx].add(g)
            acc_sq = acc_sq if g2 is None else acc_sq.at[image_idx].add(g2)
        return acc, acc_sq

    return jax.jit(chunk, in_shardings=(replicated,) * 7, out_shardings=(replicated, replicated),
                   donate_argnums=(4, 5))


def gradient_sums(plan: GradientPlan, family: PathFamily, *, absolute: bool = False, squares: bool = False,
                  stacked: int = 0, chunk_size: Any = None, memory_budget: Any = None, devices: Any = None,
                  progress: bool | str = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``sum_k weight_k * g_k`` (and ``sum_k weight_k * g_k ** 2``) per image, accumulated on the device.

    Args:
      plan: from ``plan_gradients``.
      family: the inputs to differentiate at.
      absolute: sum ``|g|`` instead of ``g``.
      squares: also return the weighted sum of squares.
      stacked: the number of parameter sets stacked on ``plan.params``' leading axis (0: one set).
      chunk_size, memory_budget, devices, progress: as in ``jaxviz.occlude`` (pairs are (image, sample)).

    Returns:
      ``(sums, sums_of_squares or None, chunk_size)``, float32 (N, H, W, C, U) each (U = 1 with
      targets or a scalar f), with a leading (sets,) axis when ``stacked``.
    """
    n, h, w, c = plan.images.shape
    check_pair_count(n, family.count, family.argument, "inputs per image")
    pairs = n * family.count
    sharding = batch_sharding(None if devices is None else tuple(devices))
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    # f's forward working set, kept for the backward pass (about twice) once per unit, plus the input
    per_pair = (3 * plan.example_bytes + 4 * plan.images[0].nbytes) * (1 + plan.kept) * max(1, stacked)
    size = chunk_size_for(per_pair, pairs, sharding.mesh.size, chunk_size, memory_budget)
    program = _sum_program(plan.f, family.generate, family.count, plan.mode, plan.units, bool(absolute),
                           bool(squares), bool(stacked), sharding, size)
    targets = None if plan.targets is None else jnp.asarray(plan.targets)
    args = jax.device_put((plan.params, plan.images, targets, family.data), replicated)
    shape = (*((stacked,) if stacked else ()), n, h, w, c, plan.kept)
    acc = jax.device_put(jnp.zeros(shape, jnp.float32), replicated)
    acc_sq = jax.device_put(jnp.zeros(shape if squares else (), jnp.float32), replicated)
    label = progress if isinstance(progress, str) else "gradients"
    with progress_bar(total=pairs, desc=label, disable=not progress, unit="grad") as bar:
        for start in range(0, pairs, size):
            acc, acc_sq = program(*args, acc, acc_sq, jax.device_put(np.int32(start), replicated))
            bar.update(min(size, pairs - start))
    return to_host(acc), (to_host(acc_sq) if squares else None), size


@functools.lru_cache(maxsize=64)
def _readout_program(f, mode, units):
    def read(params, x, targets):
        out = f(params, x)
        if mode == "scalar":
            return out[:, None]
        if mode == "targets":
            return jnp.take_along_axis(out, targets[:, None], axis=1)
        return out[:, jnp.asarray(units)]

    return jax.jit(read)


def readout(plan: GradientPlan, x: jax.Array, *, batch_size: int) -> np.ndarray:
    """The differentiated outputs of ``f`` at ``x`` (N, H, W, C): float32 (N, U), in padded batches."""
    n = x.shape[0]
    size = min(batch_size, n)
    targets = jnp.zeros(n, jnp.int32) if plan.targets is None else jnp.asarray(plan.targets)
    program = _readout_program(plan.f, plan.mode, plan.units)
    out = []
    for start in range(0, n, size):
        rows = jnp.clip(jnp.arange(start, start + size), 0, n - 1)  # the last batch repeats a row: one shape
        out.append(to_host(program(plan.params, x[rows], targets[rows]))[: n - start])
    return np.concatenate(out).astype(np.float32)
