"""Grad-CAM (Selvaraju et al. 2017) on any layer with spatial maps, through the model interface.

For an explained output ``y_u`` and a layer with activations ``A`` (h, w, c)::

    alpha_u[c] = mean over (h, w) of dy_u / dA[:, :, c]
    cam_u = ReLU(sum_c alpha_u[c] * A[:, :, c])            (h, w)

then upsampled to the input size. This is Captum's ``LayerGradCam`` with
``relu_attributions=True`` followed by ``LayerAttribution.interpolate``:
``"bilinear"`` is PyTorch's bilinear upsampling with ``align_corners=False``
(half-pixel centres, clamped at the borders), ``"nearest"`` takes the layer
pixel ``floor(o * h / H)`` for output pixel ``o``, as PyTorch does.

The gradient with respect to a layer comes from ``Network.perturbed_fn``:
the model run with a ``delta`` added at the layer, differentiated at
``delta = 0`` (for linen through ``nn.intercept_methods``, for nnx by the
adapter, for the built-in CNN directly). Several units are one forward and a
vmapped backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxviz._batching import batch_sharding, to_host
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_bool
from jaxviz.engine.backprop import check_targets, unit_cotangents
from jaxviz.engine.inputs import check_x, unit_indices
from jaxviz.engine.plan import chunk_size_for, probe, signature
from jaxviz.methods.base import Attribution, Explained, Method, option, select_targets, softmax_score
from jaxviz.models.network import Network, unit_scores_of

__all__ = ["METHOD", "GradCam", "GradCamOptions", "INTERPOLATIONS", "cam_layer_for", "check_grad_cam_network",
           "default_cam_layer", "grad_cam"]

INTERPOLATIONS = ("bilinear", "nearest")
MIN_CAM_SIZE = 7  # the default layer is the last whose maps are at least this big (7x7, VGG's last conv)


@dataclasses.dataclass(frozen=True)
class GradCam:
    """The result of ``grad_cam``.

    Attributes:
      attributions: float32 (N, H, W), or (N, H, W, U) when several outputs are kept: the maps
        upsampled to the input size.
      layer_maps: float32 (N, h, w[, U]): the maps at the layer's resolution.
      layer: the layer the maps are computed at.
      output_layer: the layer whose (scored) outputs are explained.
      targets: int (N,) the explained output of each image, or ``None``.
      units: the kept outputs (the trailing axis), or ``None``.
      chunk_size: images per compiled call.
    """

    attributions: np.ndarray
    layer_maps: np.ndarray
    layer: str
    output_layer: str
    targets: np.ndarray | None
    units: tuple[int, ...] | None
    chunk_size: int

    def pixel_map(self, targets: Any = None) -> np.ndarray:
        """``attributions``; with ``targets`` (int (N,): outputs, the ones explained or among the kept
        ``units``), each image's map of its target, (N, H, W)."""
        if targets is None:
            return self.attributions
        if self.units is None or self.targets is not None:
            if self.targets is None or not np.array_equal(np.asarray(targets), self.targets):
                raise ArgumentError("targets", f"expected the explained outputs {self.targets!r}, got {targets!r}")
            return self.attributions
        return select_targets(self.attributions, targets, self.units)


def check_grad_cam_network(network: Network, cam_layer: str, output_layer: str) -> None:
    """Grad-CAM's requirement of the network, before any method runs: the gradient of ``output_layer`` at
    ``cam_layer`` (``Network.perturbed_fn``: a network without ``apply_perturbed`` has none).

    Raises:
      ValueError: "methods: gradcam: ..." (what the network lacks).
    """
    try:
        network.perturbed_fn(cam_layer, output_layer)
    except ValueError as e:
        raise ArgumentError("methods", f"gradcam: {e}") from None


def default_cam_layer(network: Network) -> str:
    """The last layer with spatial maps at least 7x7 (else the last with spatial maps)."""
    spatial = network.spatial_layers()
    if not spatial:
        raise ArgumentError("network", f"no layer has spatial (h, w, channels) maps, so there is no Grad-CAM; layers: "
                         f"{', '.join(network.layer_names)}")
    big = [n for n in spatial if min(network.output_shape(n)[:2]) >= MIN_CAM_SIZE]
    return (big or spatial)[-1]


def _upsample(cam: jax.Array, size: tuple[int, int], mode: str) -> jax.Array:
    """(B, h, w, U) -> (B, H, W, U), as ``torch.nn.functional.interpolate(align_corners=False)``."""
    b, h, w, u = cam.shape
    if mode == "bilinear":
        return jax.image.resize(cam, (b, *size, u), "linear", antialias=False)
    rows = jnp.floor(jnp.arange(size[0]) * (h / size[0])).astype(jnp.int32)
    cols = jnp.floor(jnp.arange(size[1]) * (w / size[1])).astype(jnp.int32)
    return cam[:, rows][:, :, cols]


def _cams(fn, score, mode, units, relu, interpolation, variables, x, targets):
    """Grad-CAM maps of one parameter set for a batch: ((B, H, W, U), (B, h, w, U))."""
    acts_shape = jax.eval_shape(lambda v, x: fn(v, x, 0.0)[0], variables, x).shape

    def explained(delta):
        acts, out = fn(variables, x, delta)
        return score(out), acts

    scores, pullback, acts = jax.vjp(explained, jnp.zeros(acts_shape, x.dtype), has_aux=True)
    grads = jax.vmap(lambda ct: pullback(ct)[0])(unit_cotangents(mode, units, scores, targets))  # (U, B, h, w, c)
    cam = jnp.einsum("ubc,bhwc->bhwu", grads.mean(axis=(2, 3)), acts)
    cam = jax.nn.relu(cam) if relu else cam
    return _upsample(cam, x.shape[1:3], interpolation), cam


@functools.lru_cache(maxsize=64)
def _unperturbed(fn: Callable) -> Callable:
    """``(variables, x) -> output`` of a perturbed function at delta 0: for planning (cached per ``fn``, so
    ``probe``'s cache hits and a second call does not trace again)."""
    return lambda variables, x: fn(variables, x, 0.0)[1]


@functools.lru_cache(maxsize=64)
def _program(fn, score, mode, units, relu, interpolation, stacked):
    cams = functools.partial(_cams, fn, score, mode, units, relu, interpolation)
    if stacked:
        cams = jax.vmap(cams, in_axes=(0, None, None))
    return jax.jit(cams)


def grad_cam_maps(network: Network, x: jax.Array, *, layer: str, output_layer: str, score: Callable, mode: str,
                  units: tuple[int, ...] | None, targets: np.ndarray | None, relu: bool, interpolation: str,
                  variables: Any, stacked: int = 0, chunk_size: Any = None, memory_budget: Any = None,
                  devices: Any = None, progress: bool | str = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked-argument core of ``grad_cam``; ``variables`` may stack ``stacked`` sets on a leading axis.

    Returns:
      ``(maps (..., N, H, W, U), layer_maps (..., N, h, w, U), chunk_size)``, with a leading (sets,)
      axis when ``stacked``.
    """
    fn = network.perturbed_fn(layer, output_layer)
    n = x.shape[0]
    sharding = batch_sharding(None if devices is None else tuple(devices))
    one = jax.tree_util.tree_map(lambda v: v[0], variables) if stacked else variables
    _, forward_bytes = probe(_unperturbed(fn), True, signature(one), tuple(x.shape[1:]), x.dtype)
    per_image = (3 * forward_bytes + 4 * x[0].nbytes) * (2 + len(units or (0,)))
    size = chunk_size_for(per_image * max(1, stacked), n, sharding.mesh.size, chunk_size, memory_budget, "images")
    program = _program(fn, score, mode, units, relu, interpolation, bool(stacked))
    all_targets = jnp.zeros(n, jnp.int32) if targets is None else jnp.asarray(targets)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    variables = jax.device_put(variables, replicated)
    maps, small = [], []
    label = progress if isinstance(progress, str) else "Grad-CAM"
    with progress_bar(total=n, desc=label, disable=not progress, unit="img") as bar:
        for start in range(0, n, size):
            rows = np.minimum(np.arange(start, start + size), n - 1)  # the last chunk repeats a row: one shape
            up, cam = program(variables, jax.device_put(x[rows], sharding), jax.device_put(all_targets[rows], sharding))
            keep = min(size, n - start)
            maps.append(to_host(up)[..., :keep, :, :, :])
            small.append(to_host(cam)[..., :keep, :, :, :])
            bar.update(keep)
    return np.concatenate(maps, axis=-4), np.concatenate(small, axis=-4), size


def grad_cam(network: Network, x: Any, *, layer: str | None = None, output_layer: str | None = None,
             score: Callable | None = None, targets: Any = None, units: Sequence[int] | None = None,
             relu: bool = True, interpolation: str = "bilinear", chunk_size: int | None = None,
             memory_budget: int | None = None, devices: Sequence[jax.Device] | None = None,
             progress: bool = False) -> GradCam:
    """Grad-CAM maps of ``network``'s outputs at ``layer``, upsampled to the input size.

    Args:
      network: the model (any adapter; ``from_function`` needs ``apply_perturbed``).
      x: float (N, H, W, C) model input (``network.to_input(images)``).
      layer: a layer with (h, w, channels) maps; default ``default_cam_layer(network)``.
      output_layer: the layer whose outputs are explained, after ``layer`` (default the output).
      score: ``score(activations of output_layer) -> (N, K)``, e.g. ``jax.nn.softmax``; default:
        the activations themselves, conv maps averaged over (h, w). The same function object
        across calls reuses the compiled program.
      targets: an int or int (N,): one output per image (Captum's ``target``).
      units: indices (or a boolean mask) of the outputs to keep for every image; with neither,
        every output is kept.
      relu: rectify the maps (the paper's Grad-CAM; Captum's ``relu_attributions=True``).
      interpolation: ``"bilinear"`` or ``"nearest"`` (see the module docstring).
      chunk_size, memory_budget, devices, progress: as in ``jaxviz.occlude`` (chunks of images).

    Returns:
      ``GradCam``: ``attributions`` (N, H, W) with ``targets``, else (N, H, W, U).

    Raises:
      TypeError / ValueError naming the argument (a layer without spatial maps, an unknown
      interpolation, targets out of range...) before anything is compiled.
    """
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    x = check_x(x)
    if x.shape[1:] != network.input_spec.shape:
        raise ArgumentError("x", f"expected the network's input shape (N, {', '.join(map(str, network.input_spec.shape))})"
                         f", got {tuple(x.shape)}")
    layer = default_cam_layer(network) if layer is None else layer
    network.check_layer(layer)
    if len(network.output_shape(layer)) != 3:
        raise ArgumentError("layer", f"{layer!r} has activations of shape (N, {', '.join(map(str, network.output_shape(layer)))}),"
                         f" not (N, h, w, channels) maps; layers with spatial maps: "
                         f"{', '.join(network.spatial_layers()) or 'none'}")
    output_layer = network.output_layer if output_layer is None else output_layer
    network.perturbed_fn(layer, output_layer)  # checks the pair and that the network supports it
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise ArgumentError("interpolation", f"expected one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    relu = check_bool(relu, "relu")
    if score is not None and not callable(score):
        raise ArgumentTypeError("score", f"expected a callable or None, got {type(score).__name__}")
    score = unit_scores_of if score is None else score
    out = jax.eval_shape(score, jax.ShapeDtypeStruct((2, *network.output_shape(output_layer)), x.dtype))
    if out.ndim != 2 or out.shape[0] != 2:
        raise ArgumentError("score", f"expected (N, K) scores of the output layer, got shape {tuple(out.shape)} for N = 2")
    width, n = out.shape[1], x.shape[0]
    if targets is not None and units is not None:
        raise ValueError("targets, units: expected at most one of them")
    targets = None if targets is None else check_targets(targets, n, width)
    units = None if targets is not None else tuple(range(width)) if units is None else unit_indices(units, width)
    mode = "targets" if targets is not None else "units"
    maps, small, size = grad_cam_maps(
        network, x, layer=layer, output_layer=output_layer, score=score, mode=mode, units=units, targets=targets,
        relu=relu, interpolation=interpolation, variables=network.variables, chunk_size=chunk_size,
        memory_budget=memory_budget, devices=devices, progress=progress and "Grad-CAM")
    if targets is not None:
        maps, small = maps[..., 0], small[..., 0]
    return GradCam(maps.astype(np.float32), small.astype(np.float32), layer, output_layer, targets, units, size)


# --------------------------------------------------------------------------- the registered method


def cam_layer_for(network: Network, layer: str, cam_layer: str | None) -> str:
    """Grad-CAM's layer for explaining ``layer``: ``cam_layer``, else the default one if it comes
    before ``layer``, else the last layer with spatial maps before it."""
    if cam_layer is not None:
        return cam_layer
    position = network.layer_names.index(layer)
    default = default_cam_layer(network)
    if network.layer_names.index(default) < position:
        return default
    before = [n for n in network.spatial_layers() if network.layer_names.index(n) < position]
    if not before:
        raise ArgumentError("layer", f"Grad-CAM needs a layer with spatial maps before {layer!r}; there is none")
    return before[-1]


@dataclasses.dataclass(frozen=True)
class GradCamOptions:
    """Grad-CAM as an attribution method (rectified, upsampled bilinearly)."""

    cam_layer: str | None = option(None, "the layer with spatial maps (default: the last one at least 7x7 before "
                                         "the explained layer)")


def _problem(explained: Explained, options: GradCamOptions) -> str | None:
    network = explained.network
    if network.apply_perturbed is None:
        return "the network has no apply_perturbed (from_function without it), so no gradient at a layer"
    try:
        cam_layer_for(network, explained.layer, options.cam_layer)
    except ArgumentError as e:
        return e.message
    return None


def _check(explained: Explained, options: GradCamOptions) -> None:
    network = explained.network
    if options.cam_layer is not None:
        network.check_layer(options.cam_layer, "cam_layer")
        position = network.layer_names.index(explained.layer)
        before = [n for n in network.spatial_layers() if network.layer_names.index(n) < position]
        if options.cam_layer not in before:
            raise ArgumentError("cam_layer", f"expected a layer with (h, w, channels) maps before "
                                             f"{explained.layer!r}: {', '.join(before) or 'there is none'}; got "
                                             f"{options.cam_layer!r}")
    check_grad_cam_network(network, cam_layer_for(network, explained.layer, options.cam_layer), explained.layer)


def _run(explained: Explained, x: Any, *, targets: np.ndarray, options: GradCamOptions,
         execution: dict) -> Attribution:
    layer = cam_layer_for(explained.network, explained.layer, options.cam_layer)
    result = grad_cam(explained.network, x, layer=layer, output_layer=explained.layer,
                      score=softmax_score if explained.softmax else None, targets=targets, **execution)
    return Attribution(result.attributions, np.asarray(targets), "gradcam", {"cam_layer": layer}, result)


def _randomized_maps(network: Network, x: jax.Array, *, options: GradCamOptions, plans: Callable, engine: dict,
                     progress: Any) -> np.ndarray:
    """Unrectified Grad-CAM maps of the output layer's scores under every variable set, absolute: (sets, N, H, W)
    (unrectified, so that a map rectified to all zeros leaves no correlation undefined)."""
    layer = cam_layer_for(network, network.output_layer, options.cam_layer)
    stacked = engine["stacked"]
    targets = plans()[0].targets
    sets = [grad_cam_maps(network, jnp.asarray(x), layer=layer, output_layer=network.output_layer,
                          score=unit_scores_of, mode="targets", units=None, targets=targets, relu=False,
                          interpolation="bilinear", variables=plan.params, stacked=stacked,
                          chunk_size=engine["chunk_size"], memory_budget=engine["memory_budget"],
                          devices=engine["devices"], progress=progress and "Grad-CAM")[0][..., 0]
            for plan in plans()]
    return np.abs(np.concatenate(sets).reshape(-1, *x.shape[:3]))


METHOD = Method("gradcam", "Grad-CAM", "cam", GradCamOptions, _run, _check,
                lambda options: "Grad-CAM (at " + (options.cam_layer or "the last layer with maps of at least 7x7") + ")",
                problem=_problem, randomized_maps=_randomized_maps)
