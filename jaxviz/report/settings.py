"""``ReportSettings``: what the report computes, checked before anything runs or is written."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from jaxviz.analysis.cka import MIN_BATCH
from jaxviz.analysis.unit_occlusion import UNIT_WINDOW
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_real
from jaxviz.data.images import Dataset
from jaxviz.evaluation.sanity import DEFAULT_METHODS, randomization_layers
from jaxviz.methods import registry
from jaxviz.methods.base import explain
from jaxviz.methods.occlusion import ANCHORS
from jaxviz.models.network import Network

__all__ = ["MAX_UNITS", "ReportSettings", "check_against", "cka_layers", "runs_tcav", "sanity_methods", "tcav_layers",
           "trust_methods"]

MAX_UNITS = 16  # the most units the report's per-unit figures show (one column each)

# name: (smallest, largest or None) of the int settings
_INT_RANGES = {"num_units": (1, MAX_UNITS), "k": (1, None), "window": (1, None), "stride": (1, None),
               "tsne_points": (2, None), "tsne_iter": (250, None), "activation_images": (1, None),
               "trust_images": (1, MAX_UNITS), "rise_masks": (1, None), "sanity_images": (1, MAX_UNITS),
               "vis_steps": (0, None), "cka_batch": (0, None), "tcav_runs": (0, None),
               "seed": (0, 2**32 - 1)}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What the report computes. Defaults follow the notebook.

    Every field is checked at construction (``TypeError`` for a wrong type,
    ints must be ints and not bools; ``ValueError`` for a value out of
    range); ``make_report`` checks the rest against the data and the model
    (``k`` <= the number of images, ``window`` <= the image size, ``units``
    and ``num_units`` within the layer's width) before writing anything.

    The per-unit figures have one column per unit, so at most ``MAX_UNITS``
    (16) units are shown: a larger ``num_units`` or more ``units`` raise
    ``ValueError`` saying so (run the report again with other units to see
    more).
    """

    layer: str | None = None  # the studied layer; None: the one before the output (fc1 in the CNN)
    units: tuple[int, ...] | None = None  # None: picked from unit selectivity; 1 to MAX_UNITS indices
    num_units: int = 6  # how many units to pick when units is None: 1 to MAX_UNITS
    k: int = 10  # top-K images per unit, >= 1
    window: int = UNIT_WINDOW  # occlusion window (pixels), >= 1
    stride: int = 4  # occlusion stride (pixels), >= 1
    anchor: str = "centered"  # occlusion window placement: "centered" or "valid"
    threshold: float = 0.5  # mask threshold in [0, 1]
    sigma: float = 2.0  # mask smoothing (pixels), >= 0
    tsne_points: int = 1000  # t-SNE subsample, >= 2
    tsne_iter: int = 1000  # t-SNE iterations, >= 250
    perplexity: float = 30.0  # t-SNE perplexity, > 0 (capped by the number of points)
    activation_images: int = 4  # images in the activation-map figures, >= 1
    trust_images: int = 4  # images whose maps the "Which map to trust?" section compares, 1 to MAX_UNITS
    # RISE masks per image in that section, >= 1: a quarter of RISE's own default (it explains trust_images
    # images beside seven other methods), at about twice the noise (it falls as 1 / sqrt(masks))
    rise_masks: int = 1000
    trust_methods: tuple[str, ...] | None = None  # methods that section compares; None: all the network supports
    sanity_methods: tuple[str, ...] | None = None  # of the randomization test; None: saliency, ig, gradcam
    # (those the network supports); () skips the test
    sanity_images: int = 8  # images of the randomization test (the first of each class), 1 to MAX_UNITS
    # feature-visualization steps per shown unit, >= 0 (0 skips the section): a quarter of visualize's 512, enough
    # for every live unit of the pretrained CNN to pass its best sample image (benchmarks/results/feature_vis_cpu.json)
    vis_steps: int = 128
    # images per minibatch of the CKA between every pair of layers ("How the layers relate"), 0 (skips it) or >= 4
    cka_batch: int = 256
    # TCAV runs of the built-in concepts for every class ("Which concepts matter"), 0 (skips it) or >= 2
    tcav_runs: int = 20
    seed: int = 0  # t-SNE seed, in [0, 2**32)

    def __post_init__(self):
        for name in ("layer", "anchor"):
            v = getattr(self, name)
            if not isinstance(v, str) and not (name == "layer" and v is None):
                raise ArgumentTypeError(f"{name}", f"expected a str, got {v!r} ({type(v).__name__})")
        if self.layer == "":
            raise ArgumentError("layer", "expected a layer name or None, got ''")
        if self.anchor not in ANCHORS:
            raise ArgumentError("anchor", f"expected one of {', '.join(map(repr, ANCHORS))}, got {self.anchor!r}")
        for name, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, name)
            want = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
            if not _is_int(v):
                raise ArgumentTypeError(f"{name}", f"expected {want}, got {v!r} ({type(v).__name__})")
            if v < lo or (hi is not None and v > hi):
                extra = " (the most units the figures show)" if name == "num_units" and v > hi else ""
                raise ArgumentError(f"{name}", f"expected {want}{extra}, got {v}")
            object.__setattr__(self, name, int(v))
        for name, least in (("cka_batch", MIN_BATCH), ("tcav_runs", 2)):
            if 0 < getattr(self, name) < least:
                raise ArgumentError(name, f"expected 0 (skip the section) or an int >= {least}, got {getattr(self, name)}")
        object.__setattr__(self, "threshold", check_real(self.threshold, "threshold", 0.0, 1.0, high_open=False))
        object.__setattr__(self, "sigma", check_real(self.sigma, "sigma", 0.0))
        object.__setattr__(self, "perplexity", check_real(self.perplexity, "perplexity", 0.0, low_open=True))
        for name, sanity in (("trust_methods", False), ("sanity_methods", True)):
            v = getattr(self, name)
            if v is not None:
                chosen = registry.resolve(tuple(v) if isinstance(v, list) else v, argument=name, sanity=sanity,
                                          empty=sanity, optional=True)
                object.__setattr__(self, name, tuple(m.name for m in chosen))
        if self.units is not None:
            units = self.units
            want = f"None or a tuple of 1 to {MAX_UNITS} unit indices (ints >= 0)"
            if not isinstance(units, (tuple, list, range, np.ndarray)) or np.ndim(units) != 1:
                raise ArgumentTypeError("units", f"expected {want}, got {units!r} ({type(units).__name__})")
            bad = [u for u in units if not _is_int(u)]
            if bad:
                raise ArgumentTypeError("units", f"expected {want}, got {list(units)!r} ({bad[0]!r} is a "
                                f"{type(bad[0]).__name__})")
            if not 1 <= len(units) <= MAX_UNITS or min(units) < 0:
                more = f" (the most the figures show; got {len(units)})" if len(units) > MAX_UNITS else ""
                raise ArgumentError("units", f"expected {want}{more}, got {[int(u) for u in units]}")
            object.__setattr__(self, "units", tuple(int(u) for u in units))


def _problem(method: str, network: Network, explained: str) -> str | None:
    """Why a method cannot explain ``explained`` on this network (``Method.problem``), or ``None``."""
    chosen = registry.METHODS[method]
    return chosen.problem(explain(network, explained), chosen.options())


def trust_methods(settings: ReportSettings, network: Network) -> tuple[str, ...]:
    """The methods the "Which map to trust?" section compares: ``settings.trust_methods``, or every
    method the network supports."""
    if settings.trust_methods is not None:
        return settings.trust_methods
    explained = network.output_layer if network.is_classifier else study_layer(settings, network)
    return tuple(m for m in registry.names() if _problem(m, network, explained) is None)


def sanity_methods(settings: ReportSettings, network: Network) -> tuple[str, ...]:
    """The randomization test's methods: ``settings.sanity_methods``, or saliency, integrated gradients
    and Grad-CAM where the network supports them (none without layers to randomize)."""
    if settings.sanity_methods is not None:
        return settings.sanity_methods
    if not randomization_layers(network):
        return ()
    return tuple(m for m in DEFAULT_METHODS if _problem(m, network, network.output_layer) is None)


def study_layer(settings: ReportSettings, network: Network) -> str:
    """The layer the report studies: ``settings.layer``, or the one before the output."""
    return network.feature_layer if settings.layer is None else settings.layer


def cka_layers(network: Network) -> tuple[str, ...]:
    """The layers of the report's CKA: the top-level ones (no "/" in their name: a ResNet's stem, stages, pool and
    head rather than every conv and norm inside them), or every layer when fewer than two are top-level."""
    top = tuple(n for n in network.layer_names if "/" not in n)
    return top if len(top) >= 2 else network.layer_names


def tcav_layers(settings: ReportSettings, network: Network) -> tuple[str, ...]:
    """The layers of the report's TCAV: the last top-level layer (``cka_layers``) with (h, w, channels) maps before
    the studied layer, and the studied layer (the layer before the output when the studied layer is the output)."""
    layer = study_layer(settings, network)
    layer = network.feature_layer if layer == network.output_layer else layer
    top = cka_layers(network)
    before = [n for n in network.spatial_layers() if n in top and network.layer_names.index(n) < network.layer_names.index(layer)]
    return (*before[-1:], layer) if layer != network.output_layer else ()


def runs_tcav(settings: ReportSettings, network: Network) -> bool:
    """Whether the report runs TCAV: asked for, on a classifier with a gradient at its layers."""
    return bool(settings.tcav_runs and network.is_classifier and network.apply_perturbed is not None
                and tcav_layers(settings, network))


def check_against(settings: ReportSettings, network: Network, dataset: Dataset) -> None:
    """The checks that need the data and the model (the rest ran in ``ReportSettings``)."""
    layer = study_layer(settings, network)
    network.check_layer(layer)
    network.input_spec.check_images(dataset.images, "dataset")
    if len(dataset) < 2:
        raise ArgumentError("dataset", f"expected at least 2 images (t-SNE needs 2 points), got {len(dataset)}")
    if len(dataset.class_names) < 2:
        raise ArgumentError("dataset", f"expected images of at least 2 classes (a unit's selectivity compares classes), "
                         f"got the one class {dataset.class_names[0]!r}")
    if settings.k > len(dataset):
        raise ArgumentError("k", f"expected an int in [1, {len(dataset)}] (the dataset size), got {settings.k}")
    size = min(dataset.images.shape[1:3])
    if settings.window > size:
        raise ArgumentError("window", f"expected an int in [1, {size}] (the image size), got {settings.window}")
    shape = network.output_shape(layer)
    if len(shape) not in (1, 3):
        raise ArgumentError("layer", f"expected a layer with (units,) or (h, w, channels) outputs, {layer!r} has {shape}")
    width = shape[-1]
    explained = network.output_layer if network.is_classifier else layer
    for method in settings.trust_methods or ():
        if problem := _problem(method, network, explained):
            raise ArgumentError("trust_methods", f"{method}: {problem}")
    if settings.sanity_methods and not randomization_layers(network):
        raise ArgumentError("sanity_methods", "the network has no layer with variables to randomize; pass ()")
    for method in settings.sanity_methods or ():
        if problem := _problem(method, network, network.output_layer):
            raise ArgumentError("sanity_methods", f"{method}: {problem}")
    if settings.units is not None and max(settings.units) >= width:
        raise ArgumentError("units", f"expected indices in [0, {width}) for layer {layer}, got {list(settings.units)}")
    if settings.units is None and settings.num_units > width:
        raise ArgumentError("num_units", f"expected an int in [1, {min(width, MAX_UNITS)}] (layer {layer} has "
                         f"{width} units), got {settings.num_units}")
