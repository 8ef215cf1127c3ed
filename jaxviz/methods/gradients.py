"""Gradient attributions with Captum's semantics: saliency, input x gradient, integrated gradients, SmoothGrad.

Every method is a sum of gradients of ``f`` at inputs made from each image,
run by the gradient engine (``jaxviz.engine.backprop``) as one chunked,
sharded, compiled batch of (image, sample) pairs:

* ``saliency``: ``|df_u/dx|`` (Simonyan et al. 2014; Captum ``Saliency``, ``abs=True``);
* ``input_x_gradient``: ``x * df_u/dx`` (Captum ``InputXGradient``);
* ``integrated_gradients``: ``(x - b) * sum_k w_k df_u/dx(b + a_k (x - b))``
  (Sundararajan et al. 2017; Captum ``IntegratedGradients``: the same
  ``a_k, w_k`` for each ``method``, the same convergence delta
  ``sum(attributions) - (f_u(x) - f_u(b))``);
* ``smoothgrad``: Captum's ``NoiseTunnel(Saliency)``: the mean (``"smoothgrad"``),
  the mean of squares (``"smoothgrad_sq"``) or the variance (``"vargrad"``) of the
  saliency at ``nt_samples`` noisy copies ``x + N(0, stdevs^2)`` (Smilkov et
  al. 2017; Adebayo et al. 2018). The noise of sample ``s`` of image ``i`` is
  ``normal(fold_in(fold_in(key(seed), i), s))``, drawn on the device.

Which output is explained: ``targets`` (N,) picks one per image, like
Captum's ``target`` (attributions (N, H, W, C)); ``units`` keeps several for
every image, computed with one forward and a vmapped backward pass
(attributions (N, H, W, C, U)); with neither, a vector ``f`` keeps all its
outputs and a scalar ``f`` (N,) gives (N, H, W, C).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, check_bool, check_int, check_pair_count
from jaxviz.engine.backprop import GradientPlan, PathFamily, gradient_sums, plan_gradients, readout
from jaxviz.engine.inputs import fill_array
from jaxviz.engine.perturb import BLUR_SIGMA
from jaxviz.methods.base import Attribution, Explained, Method, option, select_targets
from jaxviz.methods.occlusion import FILL_HELP
from jaxviz.methods.rise import seed_key

__all__ = ["GradientOptions", "Gradients", "IntegratedGradientsOptions", "SmoothGradOptions", "METHODS", "IG_METHODS", "NT_TYPES", "check_noise_tunnel", "input_x_gradient", "integrated_gradients", "ig_coefficients",
           "saliency", "smoothgrad"]

IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@dataclasses.dataclass(frozen=True)
class Gradients:
    """The result of a gradient method.

    Attributes:
      attributions: float32 (N, H, W, C), or (N, H, W, C, U) when several outputs are kept.
      method: "saliency", "input_x_gradient", "integrated_gradients" or the NoiseTunnel type.
      targets: int (N,) the explained output of each image, or ``None``.
      units: the kept outputs (the trailing axis), or ``None``.
      chunk_size: (image, sample) pairs per compiled call.
      delta: integrated gradients' convergence delta ``sum(attributions) - (f(x) - f(baselines))``,
        float32 (N,) or (N, U); ``None`` for the other methods.
    """

    attributions: np.ndarray
    method: str
    targets: np.ndarray | None
    units: tuple[int, ...] | None
    chunk_size: int
    delta: np.ndarray | None = None

    def pixel_map(self, targets: Any = None) -> np.ndarray:
        """The attributions summed over the channels: float32 (N, H, W) or (N, H, W, U); with ``targets``
        (int (N,): outputs of f, the ones explained or among the kept ``units``), each image's map of its
        target, (N, H, W)."""
        summed = self.attributions.sum(axis=3, dtype=np.float32)
        if targets is None:
            return summed
        if self.units is None:  # one output per image was explained: it must be the one asked for
            if self.targets is None or not np.array_equal(np.asarray(targets), self.targets):
                raise ArgumentError("targets", f"expected the explained outputs {self.targets!r}, got {targets!r}")
            return summed
        return select_targets(summed, targets, self.units)


# --------------------------------------------------------------------------- inputs made on the device


def _at_image(data: Any, image: jax.Array, image_idx: jax.Array, sample_idx: jax.Array):
    """The image itself, weight 1 (saliency, input x gradient)."""
    return image, jnp.float32(1)


def _on_path(data: Any, image: jax.Array, image_idx: jax.Array, sample_idx: jax.Array, *, per_image: bool):
    """Point ``sample_idx`` on the straight path from the baseline, weighted by its step size."""
    baselines, alphas, weights = data
    b = baselines[image_idx] if per_image else baselines
    return b + alphas[sample_idx] * (image - b), weights[sample_idx]


@functools.lru_cache(maxsize=2)
def _path_generator(per_image: bool) -> Callable:
    return functools.partial(_on_path, per_image=per_image)


def _noisy(data: Any, image: jax.Array, image_idx: jax.Array, sample_idx: jax.Array):
    """``image + stdev * N(0, 1)``, the noise keyed by (image, sample); weight 1 / nt_samples."""
    key, stdev, weight = data
    noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, image_idx), sample_idx), image.shape)
    return image + stdev * noise.astype(image.dtype), weight


# --------------------------------------------------------------------------- shared pieces


def _shaped(sums: np.ndarray, plan: GradientPlan) -> np.ndarray:
    """(..., N, H, W, C, U) -> (..., N, H, W, C) when one output per image is explained."""
    return sums[..., 0] if plan.units is None else sums


def _result(attributions: np.ndarray, method: str, plan: GradientPlan, size: int, delta=None) -> Gradients:
    return Gradients(np.asarray(attributions, np.float32), method, plan.targets, plan.units, size,
                     None if delta is None else np.asarray(delta, np.float32))


def _run(plan: GradientPlan, family: PathFamily, engine: dict, **kwargs):
    return gradient_sums(plan, family, **kwargs, **engine)


def _engine_options(chunk_size, memory_budget, devices, progress) -> dict:
    return {"chunk_size": chunk_size, "memory_budget": memory_budget, "devices": devices, "progress": progress}


# --------------------------------------------------------------------------- methods


def saliency(f: Callable, x: Any, *, params: Any = None, targets: Any = None, units: Sequence[int] | None = None,
             abs: bool = True, chunk_size: int | None = None, memory_budget: int | None = None,
             devices: Sequence[jax.Device] | None = None, progress: bool = False) -> Gradients:
    """The gradient of each explained output with respect to the input (Captum ``Saliency``).

    Args:
      f: a pure JAX function ``f(x) -> (N,)`` or ``(N, K)``, or ``f(params, x)`` when ``params``
        is given; the same function object across calls reuses the compiled program.
      x: float (N, H, W, C), in the space ``f`` expects.
      params: optional first argument of ``f``.
      targets: an int or int (N,): one output of ``f`` per image (Captum's ``target``).
      units: indices (or a boolean mask) of f's outputs to keep for every image.
      abs: return ``|gradient|`` (Captum's default) instead of the signed gradient.
      chunk_size, memory_budget, devices, progress: as in ``jaxviz.occlude`` (pairs are images here).

    Returns:
      ``Gradients`` with ``attributions`` float32 (N, H, W, C) (targets, scalar f) or (N, H, W, C, U).
    """
    absolute = check_bool(abs, "abs")
    plan = plan_gradients(f, x, params=params, targets=targets, units=units)
    sums, _, size = _run(plan, PathFamily(_at_image, (), 1), _engine_options(chunk_size, memory_budget, devices,
                         progress and "saliency"), absolute=absolute)
    return _result(_shaped(sums, plan), "saliency", plan, size)


def input_x_gradient(f: Callable, x: Any, *, params: Any = None, targets: Any = None,
                     units: Sequence[int] | None = None, chunk_size: int | None = None,
                     memory_budget: int | None = None, devices: Sequence[jax.Device] | None = None,
                     progress: bool = False) -> Gradients:
    """``x * gradient`` (Captum ``InputXGradient``); arguments and result as in ``saliency``."""
    plan = plan_gradients(f, x, params=params, targets=targets, units=units)
    sums, _, size = _run(plan, PathFamily(_at_image, (), 1), _engine_options(chunk_size, memory_budget, devices,
                         progress and "input x gradient"))
    return _result(_shaped(sums * np.asarray(plan.images)[..., None], plan), "input_x_gradient", plan, size)


def ig_coefficients(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Captum's path coefficients ``alphas`` and step sizes ``weights``, float32 (n_steps,) each.

    ``riemann_*`` use step sizes ``1 / n_steps`` at ``alphas`` left, right or in the middle of the
    ``n_steps`` intervals; ``riemann_trapezoid`` puts them at ``linspace(0, 1, n_steps)`` with the
    first and last step sizes halved (so, as in Captum, they sum to ``1 - 1 / n_steps``);
    ``gausslegendre`` uses the Gauss-Legendre nodes and weights mapped to [0, 1].
    """
    if not isinstance(method, str) or method not in IG_METHODS:
        raise ArgumentError("method", f"expected one of {', '.join(IG_METHODS)}, got {method!r}")
    n = check_int(n_steps, "n_steps", 1 if method == "gausslegendre" else 2,
                  what="" if method == "gausslegendre" else " (Riemann sums need two steps)")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + nodes)).astype(np.float32), (0.5 * weights).astype(np.float32)
    weights = np.full(n, 1 / n)
    alphas = {"riemann_left": np.linspace(0, 1 - 1 / n, n), "riemann_right": np.linspace(1 / n, 1, n),
              "riemann_middle": np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n),
              "riemann_trapezoid": np.linspace(0, 1, n)}[method]
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(f: Callable, x: Any, *, baselines: Any = 0.0, n_steps: int = 50,
                         method: str = "gausslegendre", params: Any = None, targets: Any = None,
                         units: Sequence[int] | None = None, chunk_size: int | None = None,
                         memory_budget: int | None = None, devices: Sequence[jax.Device] | None = None,
                         progress: bool = False) -> Gradients:
    """Integrated gradients along the straight path from ``baselines`` to ``x`` (Captum's semantics).

    Args:
      f, x, params, targets, units, chunk_size, memory_budget, devices, progress: as in
        ``saliency`` (pairs are (image, step)).
      baselines: the path's start, as ``occlude``'s fill: a number, per-channel (C,), image
        (H, W, C) or per-image (N, H, W, C) values, or ``"blur"`` (each image blurred, sigma 3 pixels).
      n_steps: points on the path (>= 1 for Gauss-Legendre, >= 2 for the Riemann sums).
      method: ``"gausslegendre"`` (Captum's default), ``"riemann_left"``, ``"riemann_right"``,
        ``"riemann_middle"`` or ``"riemann_trapezoid"``; see ``ig_coefficients``.

    Returns:
      ``Gradients`` with ``attributions`` as in ``saliency`` (signed) and ``delta``, the
      convergence delta ``sum over (H, W, C) of attributions - (f(x) - f(baselines))`` per image
      (and unit): near 0 when the path integral is well approximated.
    """
    alphas, weights = ig_coefficients(n_steps, method)
    plan = plan_gradients(f, x, params=params, targets=targets, units=units)
    base, per_image = fill_array(baselines, plan.images, BLUR_SIGMA, name="baselines")
    family = PathFamily(_path_generator(per_image), (base, jnp.asarray(alphas), jnp.asarray(weights)), len(alphas),
                        "n_steps")
    sums, _, size = _run(plan, family, _engine_options(chunk_size, memory_budget, devices,
                         progress and "integrated gradients"))
    diff = np.asarray(plan.images - (base if per_image else base[None]), np.float32)
    attributions = sums * diff[..., None]  # (N, H, W, C, U)
    starts = jnp.broadcast_to(base, plan.images.shape)
    gap = readout(plan, plan.images, batch_size=size) - readout(plan, starts, batch_size=size)
    delta = attributions.sum(axis=(1, 2, 3), dtype=np.float64) - gap
    if plan.units is None:
        delta = delta[:, 0]
    return _result(_shaped(attributions, plan), "integrated_gradients", plan, size, delta)


def _check_stdevs(stdevs: Any) -> float:
    if isinstance(stdevs, (bool, np.bool_)) or not isinstance(stdevs, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError("stdevs", f"expected a non-negative number (the noise's standard deviation, in the units "
                        f"of x), got {stdevs!r}")
    if not 0 <= stdevs < np.inf:  # False for NaN
        raise ArgumentError("stdevs", f"expected a non-negative finite number (the noise's standard deviation, in "
                         f"the units of x), got {stdevs!r}")
    return float(stdevs)


def check_noise_tunnel(nt_type: Any, nt_samples: Any) -> int:
    """SmoothGrad's ``nt_type`` and ``nt_samples`` (returned as an int): VarGrad needs 2 samples at least."""
    if not isinstance(nt_type, str) or nt_type not in NT_TYPES:
        raise ArgumentError("nt_type", f"expected one of {', '.join(NT_TYPES)}, got {nt_type!r}")
    vargrad = nt_type == "vargrad"  # the variance of one sample is 0: a map of zeros
    return check_int(nt_samples, "nt_samples", 2 if vargrad else 1, 2**31 - 1,
                     " (VarGrad: the variance of one sample is 0)" if vargrad else "")


def smoothgrad(f: Callable, x: Any, *, nt_type: str = "smoothgrad", nt_samples: int = 25, stdevs: float = 0.15,
               seed: int = 0, abs: bool = True, params: Any = None, targets: Any = None,
               units: Sequence[int] | None = None, chunk_size: int | None = None, memory_budget: int | None = None,
               devices: Sequence[jax.Device] | None = None, progress: bool = False) -> Gradients:
    """SmoothGrad, SmoothGrad-squared or VarGrad of the saliency (Captum ``NoiseTunnel(Saliency)``).

    Args:
      f, x, params, targets, units, chunk_size, memory_budget, devices, progress: as in
        ``saliency`` (pairs are (image, noisy sample)).
      nt_type: ``"smoothgrad"`` (mean of the saliency over the samples), ``"smoothgrad_sq"``
        (mean of its square) or ``"vargrad"`` (its variance: mean of squares - square of mean).
      nt_samples: noisy samples per image (Captum's default is 5; the paper uses 50); at least 2 for
        ``"vargrad"`` (the variance of one sample is 0).
      stdevs: the noise's standard deviation in the units of ``x`` (0.15 is the paper's 15% of
        the range of [0, 1] inputs; Captum's default is 1.0).
      seed: int; the noise of sample ``s`` of image ``i`` is ``normal(fold_in(fold_in(key(seed), i), s))``.
      abs: the saliency is ``|gradient|`` (Captum's ``Saliency`` default) or the signed gradient.

    Returns:
      ``Gradients`` with ``method = nt_type``, attributions as in ``saliency``.
    """
    nt_samples = check_noise_tunnel(nt_type, nt_samples)
    stdev, absolute = _check_stdevs(stdevs), check_bool(abs, "abs")
    key = seed_key(seed)
    check_pair_count(len(x) if np.ndim(x) else 1, nt_samples, "nt_samples", "samples")  # before f is traced
    plan = plan_gradients(f, x, params=params, targets=targets, units=units)
    family = PathFamily(_noisy, (key, jnp.float32(stdev), jnp.float32(1 / nt_samples)), nt_samples, "nt_samples")
    means, squares, size = _run(plan, family, _engine_options(chunk_size, memory_budget, devices,
                                progress and nt_type), absolute=absolute, squares=nt_type != "smoothgrad")
    out = {"smoothgrad": means, "smoothgrad_sq": squares}.get(nt_type)
    if out is None:
        out = squares - means * means
    return _result(_shaped(out, plan), nt_type, plan, size)


# --------------------------------------------------------------------------- the registered methods


@dataclasses.dataclass(frozen=True)
class GradientOptions:
    """Saliency and input x gradient have no options (saliency is ``|gradient|``)."""


@dataclasses.dataclass(frozen=True)
class IntegratedGradientsOptions:
    """Integrated gradients as an attribution method; ``fill`` is the path's start (the baseline)."""

    n_steps: int = option(50, "points on the path")
    ig_method: str = option("gausslegendre", "the integration rule", choices=IG_METHODS)
    fill: Any = option(0.0, FILL_HELP)


@dataclasses.dataclass(frozen=True)
class SmoothGradOptions:
    """SmoothGrad (or SmoothGrad-squared, VarGrad) of the saliency as an attribution method."""

    nt_type: str = option("smoothgrad", "mean, mean of squares or variance of the saliency", choices=NT_TYPES)
    nt_samples: int = option(25, "noisy samples")
    stdevs: float = option(0.15, "the noise's standard deviation in model-input units")
    seed: int = option(0, "seed of the random masks (and SmoothGrad's noise), in [0, 2**32)")


def _no_check(explained: Explained, options: Any) -> None:
    pass


def _check_ig(explained: Explained, options: IntegratedGradientsOptions) -> None:
    from jaxviz.checks import renamed_arguments
    with renamed_arguments({"method": "ig_method"}):
        ig_coefficients(options.n_steps, options.ig_method)


def _check_smoothgrad(explained: Explained, options: SmoothGradOptions) -> None:
    check_noise_tunnel(options.nt_type, options.nt_samples)
    _check_stdevs(options.stdevs)
    seed_key(options.seed)


def _calls(name: str) -> Callable:
    """``run`` of a gradient method: the explained function's gradient of each image's target."""
    def run(explained: Explained, x: Any, *, targets: np.ndarray, options: Any, execution: dict) -> Attribution:
        common = {"params": explained.network.variables, "targets": targets, **execution}
        if name == "saliency":
            result = saliency(explained.f, x, **common)
        elif name == "ixg":
            result = input_x_gradient(explained.f, x, **common)
        elif name == "ig":
            result = integrated_gradients(explained.f, x, baselines=options.fill, n_steps=options.n_steps,
                                          method=options.ig_method, **common)
        else:
            result = smoothgrad(explained.f, x, nt_type=options.nt_type, nt_samples=options.nt_samples,
                                stdevs=options.stdevs, seed=options.seed, **common)
        return Attribution(result.pixel_map(), np.asarray(targets), name, dataclasses.asdict(options), result)

    return run


def _randomized(name: str) -> Callable:
    """``randomized_maps`` of a gradient method: its absolute maps, channels summed, under every variable set
    (``plans()``: one ``GradientPlan`` per set, shared by the methods of a sanity check)."""
    def maps(network, x: jax.Array, *, options: Any, plans: Callable, engine: dict, progress: Any) -> np.ndarray:
        flags, times_input = {"absolute": name in ("saliency", "smoothgrad")}, name in ("ixg", "ig")
        if name == "ig":
            alphas, weights = ig_coefficients(options.n_steps, options.ig_method)
            start, per_image = fill_array(options.fill, x, BLUR_SIGMA)
            family = PathFamily(_path_generator(per_image), (start, jnp.asarray(alphas), jnp.asarray(weights)),
                                len(alphas), "n_steps")
            difference = np.asarray(x - (start if per_image else start[None]))
        elif name == "smoothgrad":
            family = PathFamily(_noisy, (seed_key(options.seed), jnp.float32(options.stdevs),
                                         jnp.float32(1 / options.nt_samples)), options.nt_samples,
                                "nt_samples")
            flags["squares"] = options.nt_type != "smoothgrad"
        else:
            family = PathFamily(_at_image, (), 1)
            difference = np.asarray(x)
        sets = []
        for plan in plans():
            means, squares, _ = gradient_sums(plan, family, **flags, **engine, progress=progress)
            if name == "smoothgrad":
                means = (means if options.nt_type == "smoothgrad" else squares if options.nt_type == "smoothgrad_sq"
                         else squares - means * means)
            sets.append(means)
        sums = np.concatenate(sets).reshape(-1, *x.shape)  # (sets, N, H, W, C)
        if times_input:
            sums = sums * difference
        return np.abs(sums).sum(axis=-1)

    return maps


def _describe_ig(options: IntegratedGradientsOptions) -> str:
    start = "a black image" if options.fill == 0 else f"fill {options.fill}"
    rule = "Gauss-Legendre" if options.ig_method == "gausslegendre" else options.ig_method.replace("_", " ")
    return f"integrated gradients ({options.n_steps} {rule} steps from {start})"


METHODS = (
    Method("saliency", "saliency", "gradient", GradientOptions, _calls("saliency"), _no_check,
           lambda options: "saliency (|gradient|)", randomized_maps=_randomized("saliency")),
    Method("ixg", "input × gradient", "gradient", GradientOptions, _calls("ixg"), _no_check,
           lambda options: "input × gradient", randomized_maps=_randomized("ixg")),
    Method("ig", "integrated gradients", "gradient", IntegratedGradientsOptions, _calls("ig"), _check_ig,
           _describe_ig, randomized_maps=_randomized("ig")),
    Method("smoothgrad", "SmoothGrad", "gradient", SmoothGradOptions, _calls("smoothgrad"), _check_smoothgrad,
           lambda options: f"SmoothGrad ({options.nt_samples} samples, noise {options.stdevs})",
           randomized_maps=_randomized("smoothgrad")),
)
