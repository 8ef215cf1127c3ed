"""Feature visualization: for every unit of a layer at once, the images that maximize it, in one compiled program.

For one target (a unit or a direction) and its ``batch`` images the loss is

    - sign * sum_b objective(layer(net(from_pixels(transform_b,t(image_b))))) + sum_b penalties(image_b)
      + diversity * similarity(activations of the batch)

with ``image_b = to_image(params_b)`` (``parameterizations``), a fresh random transformation per image
and step (``transforms``; keys ``fold_in(fold_in(fold_in(key(seed), unit), b), step)``), and optax
Adam steps in a ``lax.scan``. That function of one target is ``vmap``ped over the targets of a chunk,
the chunks have one fixed size (the last one padded) planned from the layer's memory (the engines'
``chunk_size_for``) and are sharded over the devices, so all units of a layer are one compiled
program and a second call compiles nothing. A target's images depend only on the seed and the target,
so a subset of units, any chunk size and any number of devices give the same images (up to float
reassociation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxviz._batching import batch_sharding, to_host
from jaxviz._progress import progress_bar
from jaxviz.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_bool,
    check_int,
    check_pair,
    check_positive_count,
    check_real,
    check_seed,
)
from jaxviz.engine.plan import chunk_size_for, probe, signature
from jaxviz.models.network import InputSpec, Network
from jaxviz.visualization.objectives import Objective, check_objective, diversity, penalties
from jaxviz.visualization.parameterizations import (
    PARAMETERIZATIONS,
    init_params,
    sample_colour_matrix,
    sample_spectrum,
    to_image,
)
from jaxviz.visualization.relu import redirected_relus
from jaxviz.visualization.transforms import Transforms, check_transforms, draw, warp

__all__ = ["Visualization", "check_visualization", "visualize", "visualize_defaults"]


@dataclasses.dataclass(frozen=True)
class Visualization:
    """What each target of a layer looks for.

    Attributes:
      images: uint8 (U, B, H, W, C): each target's ``B`` images (``pixels`` clipped to [0, 1] and rounded).
      pixels: float32 (U, B, H, W, C): the optimized images as the network saw them, in [0, 1] unless
        ``squash=False``.
      activation: float32 (U, B): the objective each image reaches (of ``images`` when squashed, else of
        ``pixels``; no transformation).
      trace: float32 (U, steps): the objective at each step, mean over the target's images (transformed).
      units: the targets: units of ``layer`` (or the indices of the directions).
      layer: the layer.
      settings: the options that made the images (JSON-able).
    """

    images: np.ndarray
    pixels: np.ndarray
    activation: np.ndarray
    trace: np.ndarray
    units: tuple[int, ...]
    layer: str
    settings: dict

    def exemplar_ratio(self, top: Any) -> np.ndarray:
        """float32 (U,): the best image's objective over the unit's largest score on a dataset, the honesty number
        to show beside a visualization (above 1: the visualization excites the unit more than any image of the
        dataset). ``top``: a ``TopK`` of the layer's ``unit_scores`` (its first row is each unit's largest), or
        float (units of the layer,) maxima. NaN for a unit whose largest score is <= 0 (dead on the data)."""
        best = np.asarray(getattr(top, "values", top), np.float32)
        best = best[0] if best.ndim == 2 else best
        if best.ndim != 1 or best.shape[0] <= max(self.units):
            raise ArgumentError("top", f"expected a TopK or maxima of at least {max(self.units) + 1} units, got "
                                       f"shape {np.shape(best)}")
        peak = best[list(self.units)]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(peak > 0, self.activation.max(axis=1) / peak, np.nan).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Config:
    """The static settings of one compiled program (its cache key with the layer function)."""

    objective: Objective
    parameterization: str
    size: tuple[int, int]
    channels: int
    spec: InputSpec
    decorrelate: bool
    squash: bool
    transforms: Transforms
    steps: int
    lr: float
    batch: int
    diversity: float
    l1: float
    l2: float
    tv: float
    negative: bool
    redirect: bool


def _size(network: Network, layer: str, size: Any) -> tuple[int, int, int]:
    """(height, width, channels) of the images: the network's input, or ``size`` if the network takes it up to
    ``layer`` (traced abstractly, nothing compiled)."""
    h, w, c = network.input_spec.shape
    if size is None:
        return h, w, c
    sh, sw = check_pair(size, "size")
    if sh < 1 or sw < 1:
        raise ArgumentError("size", f"expected a positive (height, width), got {size!r}")
    if (sh, sw) == (h, w):
        return h, w, c
    probe = jax.ShapeDtypeStruct((1, sh, sw, c), network.input_spec.dtype)
    try:
        jax.eval_shape(network.layer_fn(layer), network.variables, probe)
    except Exception as e:  # the network's own error, whatever it is: a shape it cannot take
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArgumentError("size", f"expected a (height, width) the network takes up to {layer} (its input is "
                                    f"{h}x{w}), got {sh}x{sw}: {first[:200]}") from None
    return sh, sw, c


def _colour(decorrelate: Any, channels: int) -> np.ndarray | None:
    if isinstance(decorrelate, (bool, np.bool_)):
        if not decorrelate:
            return None
        if channels != 3:
            raise ArgumentError("decorrelate", f"expected False or a ({channels}, {channels}) matrix for "
                                               f"{channels}-channel images (the default matrix is RGB's), got True")
        return sample_colour_matrix()
    matrix = np.asarray(decorrelate, np.float32)
    if matrix.shape != (channels, channels) or not np.isfinite(matrix).all():
        raise ArgumentError("decorrelate", f"expected a bool or a finite ({channels}, {channels}) colour matrix, got "
                                           f"shape {matrix.shape}")
    return matrix


def _magnitude(magnitude: Any, param: str, size: tuple[int, int], channels: int) -> np.ndarray | None:
    if param != "maco":
        if magnitude is not None:
            raise ArgumentError("magnitude", f"expected None with param={param!r} (it is MaCo's), got an array")
        return None
    want = (channels, size[0], size[1] // 2 + 1)
    if magnitude is None:
        if channels != 3:
            raise ArgumentError("magnitude", f"expected a {want} spectrum magnitude for {channels}-channel images "
                                             "(the default is the RGB sample's), got None")
        return sample_spectrum(*size)
    magnitude = np.asarray(magnitude, np.float32)
    if magnitude.shape != want or not np.isfinite(magnitude).all() or (magnitude < 0).any():
        raise ArgumentError("magnitude", f"expected a finite, non-negative spectrum magnitude of shape {want} "
                                         f"(parameterizations.mean_spectrum(images)), got shape {magnitude.shape}")
    return magnitude


def _image_fn(config: _Config, colour: Any, magnitude: Any) -> Callable:
    """One image's parameters -> its pixels (``parameterizations.to_image`` with the config's settings)."""
    return functools.partial(to_image, parameterization=config.parameterization, size=config.size, colour=colour,
                             squash=config.squash, magnitude=magnitude)


def _objective(config: _Config, layer_fn: Callable, variables: Any, directions: Any, pixels: jax.Array,
               unit: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The layer's activations of a target's images (pixels (B, H, W, C) in [0, 1]) and each image's objective."""
    activations = layer_fn(variables, config.spec.from_pixels(pixels))
    return activations, jax.vmap(lambda a: config.objective.value(a, unit, directions))(activations)


def _loss(config: _Config, layer_fn: Callable, variables: Any, directions: Any, colour: Any, magnitude: Any,
          params: jax.Array, unit: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One target's loss over its ``batch`` images (params (B, ...)) at one step; aux: the objective per image."""
    image = _image_fn(config, colour, magnitude)
    images = jax.vmap(image)(params)
    seen = images
    if not config.transforms.identity:
        seen = jax.vmap(lambda im, k: warp(im, *draw(k, config.transforms)))(images, keys)
    activations, values = _objective(config, layer_fn, variables, directions, seen, unit)
    sign = -1.0 if config.negative else 1.0
    loss = -sign * jnp.sum(values)
    if config.l1 or config.l2 or config.tv:
        loss = loss + jnp.sum(jax.vmap(functools.partial(penalties, l1=config.l1, l2=config.l2, tv=config.tv))(images))
    if config.diversity:
        loss = loss + config.diversity * diversity(activations)
    return loss, values


def _one_target(config: _Config, layer_fn: Callable, variables: Any, directions: Any, colour: Any,
                magnitude: Any, unit: jax.Array, key: jax.Array):
    """One target's images, final objective and trace."""
    image_keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(config.batch))
    init_keys, step_keys = jax.vmap(jax.random.split, out_axes=1)(image_keys)
    params = jax.vmap(lambda k: init_params(k, config.parameterization, config.size, config.channels))(init_keys)
    optimizer = optax.adam(config.lr)
    loss = functools.partial(_loss, config, layer_fn, variables, directions, colour, magnitude)

    def step(carry, i):
        params, state = carry
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(step_keys)
        (_, values), grads = jax.value_and_grad(loss, has_aux=True)(params, unit, keys)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), jnp.mean(values)

    (params, _), trace = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(config.steps))
    pixels = jax.vmap(_image_fn(config, colour, magnitude))(params)
    shown = jnp.round(jnp.clip(pixels, 0, 1) * 255) / 255 if config.squash else pixels
    _, values = _objective(config, layer_fn, variables, directions, shown, unit)
    return pixels, values, trace


@functools.lru_cache(maxsize=32)
def _program(config: _Config, layer_fn: Callable, sharding: NamedSharding):
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def chunk(variables, directions, colour, magnitude, units, keys):
        one = functools.partial(_one_target, config, layer_fn, variables, directions, colour, magnitude)
        return jax.vmap(one)(units, keys)

    return jax.jit(chunk, in_shardings=(replicated,) * 4 + (sharding, sharding), out_shardings=sharding)


def _check_units(units: Any, targets: int) -> tuple[int, ...]:
    if units is None:
        return tuple(range(targets))
    if isinstance(units, (int, np.integer)) and not isinstance(units, (bool, np.bool_)):
        units = (units,)
    if isinstance(units, range):
        units = tuple(units)
    if not isinstance(units, (tuple, list, np.ndarray)) or not len(units):
        raise ArgumentTypeError("units", f"expected None or a non-empty sequence of ints in [0, {targets}), got "
                                         f"{units!r}")
    for u in units:
        check_int(u, "units", 0, targets - 1)
    return tuple(int(u) for u in units)


@dataclasses.dataclass(frozen=True)
class _Plan:
    config: _Config
    units: tuple[int, ...]
    colour: np.ndarray | None
    directions: np.ndarray | None
    magnitude: np.ndarray | None


def _plan(network: Network, layer: str, units: Any, *, objective: Any, negative: Any, steps: Any, lr: Any,
          param: Any, decorrelate: Any, squash: Any, transforms: Any, batch: Any, diversity: Any, l1: Any, l2: Any,
          tv: Any, seed: Any, size: Any, redirect_relu: Any, magnitude: Any, chunk_size: Any, memory_budget: Any,
          progress: Any) -> _Plan:
    """Every argument of ``visualize`` checked, before any work."""
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    network.check_layer(layer)
    target = check_objective(objective, layer, network.output_shape(layer))
    chosen = _check_units(units, target.targets)
    negative, squash = check_bool(negative, "negative"), check_bool(squash, "squash")
    steps = check_int(steps, "steps", 1)
    lr = check_real(lr, "lr", 0.0, low_open=True)
    if param not in PARAMETERIZATIONS:
        raise ArgumentError("param", f"expected one of {', '.join(PARAMETERIZATIONS)}, got {param!r}")
    h, w, c = _size(network, layer, size)
    colour = _colour(decorrelate, c)
    moves = check_transforms(transforms, min(h, w))
    batch = check_int(batch, "batch", 1)
    diversity = check_real(diversity, "diversity", 0.0)
    if diversity and batch == 1:
        raise ArgumentError("diversity", f"expected 0 with batch=1 (diversity pushes a unit's images apart), got "
                                         f"{diversity}")
    l1, l2, tv = (check_real(v, name, 0.0) for v, name in ((l1, "l1"), (l2, "l2"), (tv, "tv")))
    seed = check_seed(seed)
    check_positive_count(chunk_size, "chunk_size", "units")
    check_positive_count(memory_budget, "memory_budget", "bytes")
    check_bool(progress, "progress")
    redirect = check_bool(redirect_relu, "redirect_relu")
    config = _Config(target, param, (h, w), c, network.input_spec, colour is not None, squash, moves, steps, lr,
                     batch, diversity, l1, l2, tv, negative, redirect)
    return _Plan(config, chosen, colour, target.directions, _magnitude(magnitude, param, (h, w), c))


def visualize_defaults() -> dict[str, Any]:
    """``visualize``'s options and their defaults, read from its signature (their one owner), ``devices`` aside."""
    return {name: p.default for name, p in inspect.signature(visualize).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "devices"}


def check_visualization(network: Network, layer: str, units: Sequence[int] | None = None, **options: Any) -> None:
    """Raise what ``visualize(network, layer, units, **options)`` would raise for its arguments, without running
    it (a command line checks its options before reading the data)."""
    defaults = visualize_defaults()
    unknown = sorted(set(options) - set(defaults) - {"devices"})  # devices: checked where they are used
    if unknown:
        raise ArgumentError(unknown[0], f"not an argument of visualize (its options: {', '.join(defaults)})")
    _plan(network, layer, units, **{**defaults, **{k: v for k, v in options.items() if k != "devices"}})


def visualize(network: Network, layer: str, units: Sequence[int] | None = None, *, objective: Any = "channel",
              negative: bool = False, steps: int = 512, lr: float = 0.05, param: str = "fourier",
              decorrelate: Any = True, squash: bool = True, transforms: Any = "standard", batch: int = 1,
              diversity: float = 0.0, l1: float = 0.0, l2: float = 0.0, tv: float = 0.0, seed: int = 0,
              size: tuple[int, int] | None = None, redirect_relu: bool = True, magnitude: Any = None, chunk_size: int | None = None, memory_budget: int | None = None,
              devices: Sequence[jax.Device] | None = None, progress: bool = False) -> Visualization:
    """The images that maximize (``negative``: minimize) each unit of ``layer``, all units in one compiled program.

    Args:
      network: the model; its ``InputSpec`` turns the [0, 1] pixels into input (``InputSpec.from_pixels``).
      layer: a layer with (H, W, C) maps or (C,) units.
      units: the targets to draw (default: all): units of the layer, or indices of ``objective``'s directions.
      objective: ``"channel"`` (a unit's map averaged over space; a dense unit itself), ``"neuron"`` (the
        centre position), a direction float (C,) or several (D, C) over the layer's channels, or a callable
        ``f(activation (H, W, C) or (C,)) -> ()`` (one target).
      negative: minimize instead: what suppresses the unit.
      steps: optimizer steps (optax Adam at learning rate ``lr``).
      param: ``"fourier"`` (a 1/f-scaled spectrum, Lucid's), ``"pixel"``, or ``"maco"`` (MaCo: the phase only,
        the spectrum magnitude fixed to ``magnitude``).
      decorrelate: colour decorrelation: True (the RGB covariance root of the embedded CIFAR-10 sample), False,
        or a (C, C) matrix (``parameterizations.colour_matrix(your images)``).
      squash: a sigmoid maps the image into [0, 1]; False leaves it unbounded (a closed-form check).
      transforms: ``"standard"`` (jitter, scale, rotate, scaled to the image size), ``"none"``, a list of
        names among ``"jitter"``, ``"scale"``, ``"rotate"``, or a ``transforms.Transforms``.
      batch: images per target; with ``diversity > 0`` they are pushed apart (Lucid's Gram-matrix diversity).
      l1, l2, tv: penalties on each image: L1 about grey, L2 about 0, total variation.
      seed: in [0, 2**32); a target's images depend only on the seed and the target.
      size: (height, width) of the images (default: the network's input size); another size must be one the
        network takes up to ``layer`` (a convolutional layer usually takes any: larger pictures of a conv unit).
      magnitude: with ``param="maco"``: float (C, H, W // 2 + 1), the fixed magnitude
        (``parameterizations.mean_spectrum(your images)``); default the embedded sample's.
      redirect_relu: Lucid's redirected ReLU gradient (``relu.redirected_relus``), so that a unit silent at the
        starting image is still drawn; the objective values are the model's own either way.
      chunk_size, memory_budget, devices, progress: targets per compiled call (default: planned from
        ``memory_budget``), the devices the targets are sharded over, a progress bar over the chunks.

    Returns:
      ``Visualization`` with images uint8 (U, batch, H, W, C).

    Raises:
      ``ArgumentError`` / ``ArgumentTypeError`` naming the argument, before anything is compiled.
    """
    plan = _plan(network, layer, units, objective=objective, negative=negative, steps=steps, lr=lr, param=param,
                 decorrelate=decorrelate, squash=squash, transforms=transforms, batch=batch, diversity=diversity,
                 l1=l1, l2=l2, tv=tv, seed=seed, size=size, redirect_relu=redirect_relu, magnitude=magnitude, chunk_size=chunk_size,
                 memory_budget=memory_budget, progress=progress)
    config, chosen, colour, target_directions = plan.config, plan.units, plan.colour, plan.directions
    (h, w), c, batch = config.size, config.channels, config.batch
    layer_fn = network.layer_fn(layer)
    sharding = batch_sharding(None if devices is None else tuple(devices))
    _, example_bytes = probe(layer_fn, True, signature(network.variables), (h, w, c), network.input_spec.dtype)
    # per target: the batch's forward kept for the backward pass (about three times), images, parameters, Adam
    per_target = batch * (3 * example_bytes + 16 * h * w * c * 4)
    size = chunk_size_for(per_target, len(chosen), sharding.mesh.size, chunk_size, memory_budget, "units")
    program = _program(config, layer_fn, sharding)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    directions = np.zeros((1, c), np.float32) if target_directions is None else target_directions
    args = jax.device_put((network.variables, directions, colour, plan.magnitude), replicated)
    root = jax.random.key(seed)
    pixels, values, traces = [], [], []
    with progress_bar(total=len(chosen), desc="units", disable=not progress, unit="unit") as bar:
        for start in range(0, len(chosen), size):
            part = list(chosen[start:start + size])
            padded = np.asarray(part + [part[0]] * (size - len(part)), np.int32)  # padding repeats a target
            keys = jax.vmap(lambda u: jax.random.fold_in(root, u))(jnp.asarray(padded))
            with redirected_relus() if config.redirect else contextlib.nullcontext():  # traced on the first call
                out = program(*args, jax.device_put(padded, sharding), jax.device_put(keys, sharding))
            p, v, t = (to_host(a)[:len(part)] for a in out)
            pixels.append(p)
            values.append(v)
            traces.append(t)
            bar.update(len(part))
    pixels = np.concatenate(pixels).astype(np.float32)
    images = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    settings = {"objective": objective if isinstance(objective, str) else config.objective.kind, "negative": config.negative,
                "steps": config.steps, "lr": config.lr, "param": param, "decorrelate": colour is not None,
                "squash": config.squash, "transforms": dataclasses.asdict(config.transforms), "batch": config.batch,
                "diversity": config.diversity, "l1": config.l1, "l2": config.l2, "tv": config.tv, "seed": seed, "size": list(config.size),
                "redirect_relu": config.redirect}
    return Visualization(images, pixels, np.concatenate(values).astype(np.float32),
                         np.concatenate(traces).astype(np.float32), chosen, layer, settings)
