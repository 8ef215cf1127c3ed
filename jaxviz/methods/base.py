"""What a method is: a ``Method`` record, its options, its result, and what it explains.

A method is one module of ``jaxviz.methods`` that defines its function (``rise``,
``saliency``, ...), an options dataclass (defaults and help text in one place:
the command line's options are generated from it) and one ``Method`` record;
``jaxviz.methods.registry`` lists the records. Every caller (the command line,
``compare_methods``, ``randomization_test``, ``run_dataset``, the report) reads
the registry, so adding a method is one module, one registry line and one row of
the contract test (``tests/test_methods_contract.py``).

Targets mean one thing everywhere: ``targets[n]`` is an index of the explained
function's last output axis (a class of a classifier's softmax, a unit of a
layer), the output whose map is made for image ``n``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.engine.perturb import MaskFamily
from jaxviz.models.network import Network

__all__ = ["KINDS", "Attribution", "Explained", "Method", "RunFamily", "explain", "option", "options_fields",
           "select_targets", "softmax_score", "target_positions"]

KINDS = ("perturbation", "gradient", "cam")


def option(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A field of a method's options dataclass: its default and the help text the command line shows."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def options_fields(cls) -> dict[str, dataclasses.Field]:
    """name -> field of an options dataclass."""
    return {f.name: f for f in dataclasses.fields(cls)}


def softmax_score(out: jax.Array) -> jax.Array:
    """A classifier's output layer (N, ...) as its softmax probabilities (N, classes)."""
    return jax.nn.softmax(out.reshape(out.shape[0], -1), axis=-1)


@functools.lru_cache(maxsize=16)
def _probabilities(network: Network):
    fn = network.layer_fn(network.output_layer)
    return lambda variables, x: softmax_score(fn(variables, x))


@dataclasses.dataclass(frozen=True)
class Explained:
    """What a map explains.

    Attributes:
      network: the model.
      layer: the explained layer.
      f: ``f(variables, x float (N, H, W, C)) -> (N, outputs)``: the softmax of a classifier's
        output layer, else the layer's units averaged over space (``Network.score_fn``).
      softmax: whether ``f`` is a classifier's softmax.
    """

    network: Network
    layer: str
    f: Callable
    softmax: bool

    @property
    def outputs(self) -> int:
        """The number of outputs of ``f`` (the range of a target)."""
        if self.softmax:
            return int(np.prod(self.network.output_shape(self.layer)))
        return self.network.num_units(self.layer)


def explain(network: Network, layer: str | None = None) -> Explained:
    """A classifier's softmax for its output layer (the default, ``layer`` None or the output layer), else
    ``layer``'s units averaged over space (default ``network.feature_layer``)."""
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    if network.is_classifier and layer in (None, network.output_layer):
        return Explained(network, network.output_layer, _probabilities(network), True)
    layer = layer or network.feature_layer
    network.check_layer(layer)
    return Explained(network, layer, network.score_fn(layer), False)


@dataclasses.dataclass(frozen=True)
class Attribution:
    """One map per image, of one output each: what every registered method returns (``Method.run``).

    Attributes:
      maps: float32 (N, H, W): image ``n``'s map of output ``targets[n]``; positive where the pixel
        supports that output (gradient maps summed over channels, Grad-CAM upsampled to the image).
      targets: int (N,): the explained output of each image (an index of the explained function's outputs).
      method: the method's registered name.
      settings: the options that made the maps (JSON-able), as the command line records them.
      result: the method's own result (``Occlusion``, ``Rise``, ``Ablation``, ``Gradients``, ``GradCam``)
        with its extra fields.
    """

    maps: np.ndarray
    targets: np.ndarray
    method: str
    settings: dict
    result: Any


@dataclasses.dataclass(frozen=True)
class RunFamily:
    """A perturbation method as a dataset run streams it: masks shared by every image and how their
    outputs become one map.

    Attributes:
      family: the masks (made on the device).
      map_shape: (R, C) of one image's map.
      reduce: ``"difference"`` (one map cell per mask, row-major: ``base - f(masked)``) or
        ``"weighted_sum"`` (each mask's output spread over the pixels it keeps, times ``scale``).
      scale: the factor on a weighted sum.
      settings: the options that define the run (recorded in the store; a resume must match them).
    """

    family: MaskFamily
    map_shape: tuple[int, int]
    reduce: str
    scale: float
    settings: dict


@dataclasses.dataclass(frozen=True)
class Method:
    """One attribution method, as every caller sees it.

    Attributes:
      name: the short name (command line, JSON, registry key), e.g. ``"ig"``.
      label: the display name (figures, tables), e.g. ``"integrated gradients"``.
      kind: ``"perturbation"``, ``"gradient"`` or ``"cam"``.
      options: the options dataclass: every field has a default and ``metadata["help"]``.
      run: ``run(explained, x float (N, H, W, C), *, targets int (N,), options, execution) -> Attribution``;
        ``execution``: ``chunk_size``, ``memory_budget``, ``devices``, ``progress``.
      check: ``check(explained, options)``: what the method needs of the options and the network,
        before any work (``ArgumentError`` naming the option).
      describe: ``describe(options) -> str``: the method and its options in a few words (the report).
      problem: ``problem(explained, options) -> str | None``: why the method cannot explain this
        network's layer (``None``: it can); callers that pick methods leave such methods out.
      run_family: perturbation methods that a dataset run can stream: ``run_family(options,
        image_shape (H, W, C)) -> RunFamily``; ``None`` otherwise.
      randomized_maps: methods the sanity check can run: ``randomized_maps(network, x, *, options,
        targets, variable_sets, stacked, engine) -> float (sets, N, H, W)`` absolute maps of the output
        layer's scores under each set of variables; ``None`` otherwise.
    """

    name: str
    label: str
    kind: str
    options: type
    run: Callable
    check: Callable
    describe: Callable
    problem: Callable = lambda explained, options: None
    run_family: Callable | None = None
    randomized_maps: Callable | None = None

    def make_options(self, values: Mapping[str, Any] | None = None, **more: Any):
        """The options dataclass from ``values`` (unknown names are refused, naming them)."""
        values = {**(values or {}), **more}
        fields = options_fields(self.options)
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise ArgumentError(unknown[0], f"not an option of {self.name} (its options: {', '.join(fields)})")
        return self.options(**values)

    def options_for(self, values: Mapping[str, Any]):
        """The options dataclass from the entries of ``values`` that are its fields (others are ignored:
        the options shared by several methods, such as a command line's)."""
        fields = options_fields(self.options)
        return self.options(**{k: v for k, v in values.items() if k in fields})


def target_positions(targets: Any, n: int, units: tuple[int, ...] | None, width: int | None = None, *,
                     of: str = "f") -> np.ndarray:
    """Each image's explained output (``targets``: int (N,), indices of f's outputs) as its position on the
    kept axis of a result that kept ``units`` (``None``: every output, ``width`` of them when known); the one
    check of ``targets``. ``of`` names what the outputs are of, in the errors (``f``, a layer)."""
    targets = np.asarray(targets)
    if targets.shape != (n,) or not np.issubdtype(targets.dtype, np.integer):
        raise ArgumentError("targets", f"expected {n} ints (one output of {of} per image), got "
                                       f"{targets.tolist() if targets.ndim else targets!r}")
    if units is None:
        if targets.size and (targets.min() < 0 or (width is not None and targets.max() >= width)):
            raise ArgumentError("targets", f"expected outputs in [0, {width}) (of {of}), got {targets.tolist()}")
        return targets.astype(np.int64)
    where = {u: i for i, u in reversed(list(enumerate(units)))}
    missing = [int(t) for t in targets if int(t) not in where]
    if missing:
        raise ArgumentError("targets", f"expected outputs among the kept units {list(units)}, got {missing[0]}")
    return np.asarray([where[int(t)] for t in targets], np.int64)


def select_targets(values: np.ndarray, targets: Any, units: tuple[int, ...] | None) -> np.ndarray:
    """``values`` (N, ..., U) on a kept axis of ``units`` -> (N, ...): image n's value for output ``targets[n]``
    (an index of f's outputs, one meaning everywhere)."""
    position = target_positions(targets, values.shape[0], units, values.shape[-1])
    return np.take_along_axis(values, position.reshape((-1,) + (1,) * (values.ndim - 1)), axis=-1)[..., 0]
