"""Which map to trust? Perturbation and gradient methods side by side, scored by faithfulness metrics.

``compare_methods(network, images)`` explains each image's target output
(the predicted class of a classifier, by default: its softmax probability)
with the chosen methods — occlusion, RISE and feature ablation over a grid
of segments on the fused perturbation engine; saliency, input x gradient,
integrated gradients, SmoothGrad and Grad-CAM on the gradient engine — then
scores every map with the deletion and insertion AUCs (Petsiuk et al. 2018:
lower deletion, higher insertion is better) and MuFidelity (Bhatt et al.
2020: higher is better). ``method_map`` is the one place that runs a method
by name, for the report and the CLI.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from scipy.stats import rankdata

from jaxviz.checks import ArgumentError, check_seed, renamed_arguments
from jaxviz.engine.activations import layer_features
from jaxviz.evaluation.faithfulness import check_mu_fidelity_lattice, check_steps, deletion_curve, mu_fidelity
from jaxviz.methods.ablation import feature_ablation, segment_labels
from jaxviz.methods.gradcam import check_grad_cam_network, default_cam_layer, grad_cam
from jaxviz.methods.gradients import (
    check_noise_tunnel,
    ig_coefficients,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from jaxviz.methods.occlusion import WINDOW, occlude
from jaxviz.methods.rise import NUM_MASKS_MANY, rise
from jaxviz.models.network import Network

__all__ = ["METHODS", "MethodComparison", "check_methods", "compare_methods", "method_map"]

# short name (CLI, JSON) -> display name (figures, MethodComparison's keys)
METHODS = {"occlusion": "occlusion", "rise": "RISE", "ablation": "feature ablation", "saliency": "saliency",
           "ixg": "input × gradient", "ig": "integrated gradients", "smoothgrad": "SmoothGrad",
           "gradcam": "Grad-CAM"}
PERTURBATION_METHODS = ("occlusion", "rise", "ablation")

METRICS = ("deletion_auc", "insertion_auc", "mu_fidelity")
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "mu_fidelity": "higher"}


@dataclasses.dataclass(frozen=True)
class MethodComparison:
    """Maps of several methods for the same images and targets, and their faithfulness.

    Attributes:
      targets: int (n,): the output explained for each image (an index of the
        output layer for a classifier, else a unit of ``layer``).
      layer: the explained layer (the output layer of a classifier: its softmax).
      maps: method name -> float32 (n, H, W) attribution maps (positive: supports the target).
      scores: method name -> metric name -> float (n,): ``deletion_auc``,
        ``insertion_auc``, ``mu_fidelity`` per image.
    """

    targets: np.ndarray
    layer: str
    maps: dict
    scores: dict

    def means(self) -> dict:
        """method -> metric -> mean over the images."""
        return {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in self.scores.items()}

    def ranks(self) -> dict:
        """method -> mean rank over the three metrics (0: best by all three); methods with equal means
        share their average rank in that metric, so equal scores give equal ranks."""
        means, methods = self.means(), list(self.scores)
        totals = np.zeros(len(methods))
        for metric in METRICS:
            sign = 1 if BETTER[metric] == "lower" else -1
            totals += rankdata([sign * means[m][metric] for m in methods]) - 1  # halves: sums are exact
        return {m: float(t / len(METRICS)) for m, t in zip(methods, totals)}

    def ranking(self) -> list[str]:
        """Methods from most to least faithful by ``ranks`` (tied methods in the order given)."""
        ranks = self.ranks()
        return sorted(self.scores, key=ranks.__getitem__)

    def sentence(self) -> str:
        """One sentence naming the most faithful method (or the methods that tie), with the best by each
        metric; with one method, its means (there is nothing to compare it with)."""
        means = self.means()
        if len(means) == 1:
            (only,) = means
            values = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in means[only].items())
            return f"Only {only} was scored ({values}): there is no other method to compare it with."
        best = []
        for metric in METRICS:
            pick = min if BETTER[metric] == "lower" else max
            value = pick(means[m][metric] for m in means)
            best.append(f"{metric.replace('_', ' ')}: {_names([m for m in means if means[m][metric] == value])} "
                        f"({value:.3f})")
        ranks = self.ranks()
        top = [m for m in ranks if ranks[m] == min(ranks.values())]
        lead = (f"{top[0]} is the most faithful method" if len(top) == 1 else
                f"{_names(top)} tie as the most faithful methods")
        return f"On this model {lead} by mean rank over the three metrics; best by {', '.join(best)}."


def _names(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _softmax_score(out: jax.Array) -> jax.Array:
    """A classifier's output layer (N, ...) as its softmax probabilities (N, classes)."""
    return jax.nn.softmax(out.reshape(out.shape[0], -1), axis=-1)


@functools.lru_cache(maxsize=16)
def _probabilities(network: Network):
    fn = network.layer_fn(network.output_layer)
    return lambda variables, x: _softmax_score(fn(variables, x))


def explained_function(network: Network, layer: str | None):
    """``(layer, f, softmax)``: the explained layer and ``f(variables, x) -> (N, outputs)``: a classifier's
    softmax for its output layer (the default), else the layer's units averaged over space."""
    if network.is_classifier and layer in (None, network.output_layer):
        return network.output_layer, _probabilities(network), True
    layer = layer or network.feature_layer
    network.check_layer(layer)
    return layer, network.score_fn(layer), False


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


def method_map(network: Network, x: np.ndarray, method: str, *, layer: str | None = None,
               targets: np.ndarray, window: int = WINDOW, stride: int = 4, fill=0.0, rise_masks: int = NUM_MASKS_MANY,
               rise_cells: int = 7, rise_p: float = 0.5, segments=8, ig_steps: int = 50,
               ig_method: str = "gausslegendre", nt_type: str = "smoothgrad", nt_samples: int = 25,
               stdevs: float = 0.15, cam_layer: str | None = None, seed: int = 0,
               progress: bool = False) -> np.ndarray:
    """One method's map of each image's target, by short name (a key of ``METHODS``).

    Args:
      network: the model; x: float (n, H, W, C) model input.
      method: "occlusion", "rise", "ablation", "saliency", "ixg", "ig", "smoothgrad" or "gradcam".
      layer: the explained layer (see ``explained_function``).
      targets: int (n,) the explained output of each image.
      window, stride, fill: occlusion (``fill`` also RISE's and ablation's, and integrated
        gradients' baseline).
      rise_masks, rise_cells, rise_p: RISE.
      segments: feature ablation: cells per side of a grid, or (H, W) / (n, H, W) segment ids.
      ig_steps, ig_method: integrated gradients.
      nt_type, nt_samples, stdevs: SmoothGrad.
      cam_layer: Grad-CAM's layer (default ``cam_layer_for``).
      seed: RISE's masks and SmoothGrad's noise.

    Returns:
      float32 (n, H, W): positive where the pixel supports the target (gradient maps summed over
      channels; Grad-CAM upsampled).
    """
    if method not in METHODS:
        raise ArgumentError("method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    layer, f, softmax = explained_function(network, layer)
    targets = np.asarray(targets)
    rows = np.arange(len(x))
    common = {"params": network.variables, "progress": progress}
    if method in PERTURBATION_METHODS:
        units, position = np.unique(targets, return_inverse=True)  # only the explained outputs are kept
        common.update(units=tuple(int(u) for u in units), fill=fill)
        position = position.reshape(-1)
        if method == "occlusion":
            return occlude(f, x, window=window, stride=stride, **common).pixel_map(position).astype(np.float32)
        if method == "rise":
            maps = rise(f, x, num_masks=rise_masks, cells=rise_cells, p=rise_p, seed=seed, **common).maps
        else:
            maps = feature_ablation(f, x, segments=segments, **common).maps
        return maps[rows, ..., position].astype(np.float32)
    common["targets"] = targets
    if method == "saliency":
        result = saliency(f, x, **common)
    elif method == "ixg":
        result = input_x_gradient(f, x, **common)
    elif method == "ig":
        result = integrated_gradients(f, x, baselines=fill, n_steps=ig_steps, method=ig_method, **common)
    elif method == "smoothgrad":
        result = smoothgrad(f, x, nt_type=nt_type, nt_samples=nt_samples, stdevs=stdevs, seed=seed, **common)
    else:
        cam_layer = cam_layer_for(network, layer, cam_layer)
        return grad_cam(network, x, layer=cam_layer, output_layer=layer, score=_softmax_score if softmax else None,
                        targets=targets, progress=progress).attributions.astype(np.float32)
    return result.pixel_map().astype(np.float32)


def check_methods(network: Network, methods, *, layer: str, cam_layer: str | None = None, segments=8,
                  ig_steps: int = 50, ig_method: str = "gausslegendre", nt_type: str = "smoothgrad",
                  nt_samples: int = 25, steps: int | None = None, mu_grid: int | None = None,
                  num_subsets: int = 128, seed: int = 0) -> None:
    """Every chosen method's requirements, before any of them runs: Grad-CAM's layer and its gradient at a
    layer (``apply_perturbed``), feature ablation's grid, integrated gradients' steps, SmoothGrad's samples,
    the deletion / insertion ``steps`` and MuFidelity's lattice (each unless None) and the ``seed``; each rule
    is checked by its owner.

    Raises:
      ValueError / TypeError naming the argument (``methods`` for what a method needs of the network).
    """
    if isinstance(methods, str) or not methods or any(m not in METHODS for m in methods):
        raise ArgumentError("methods", f"expected short names from {', '.join(METHODS)}, got {methods!r}")
    h, w = network.input_spec.shape[:2]
    check_seed(seed)
    if steps is not None:
        check_steps(steps, h * w)
    if mu_grid is not None:
        with renamed_arguments({"grid": "mu_grid"}):
            check_mu_fidelity_lattice(mu_grid, num_subsets, h, w)
    if "ig" in methods:
        with renamed_arguments({"n_steps": "ig_steps"}):
            ig_coefficients(ig_steps, ig_method)
    if "smoothgrad" in methods:
        check_noise_tunnel(nt_type, nt_samples)
    if "ablation" in methods:
        segment_labels(segments, h, w)
    if "gradcam" in methods:
        check_grad_cam_network(network, cam_layer_for(network, layer, cam_layer), layer)


def compare_methods(network: Network, images: np.ndarray, *, targets: np.ndarray | None = None,
                    layer: str | None = None, methods=tuple(METHODS), window: int = WINDOW, stride: int = 4,
                    rise_masks: int = NUM_MASKS_MANY, rise_cells: int = 7, segments: int = 8, ig_steps: int = 50,
                    nt_samples: int = 25, stdevs: float = 0.15, cam_layer: str | None = None, steps: int = 50,
                    mu_grid: int = 8, num_subsets: int = 128, seed: int = 0,
                    progress: bool = False) -> MethodComparison:
    """The chosen methods' maps of each image's target, with their faithfulness.

    Args:
      network: the model.
      images: uint8 (n, H, W, C) of the network's input size.
      targets: int (n,) outputs to explain; default the predicted class of a
        classifier (explaining its softmax), or unit 0 of ``layer`` otherwise.
      layer: for a network without class names, the layer whose unit is explained
        (default ``network.feature_layer``); a classifier's output layer by default.
      methods: short names from ``METHODS`` (default all eight).
      window, stride: the occluder.
      rise_masks, rise_cells: RISE's number of masks and grid size.
      segments: feature ablation over a ``segments x segments`` grid.
      ig_steps: integrated gradients' steps (Gauss-Legendre, zero baseline).
      nt_samples, stdevs: SmoothGrad's samples and noise.
      cam_layer: Grad-CAM's layer (default ``cam_layer_for``).
      steps: deletion / insertion steps, at most the pixels of an image.
      mu_grid, num_subsets: MuFidelity's grid of cells and number of random subsets.
      seed: RISE's, SmoothGrad's and MuFidelity's seed, in [0, 2**32).
      progress: progress bars.

    Every method's requirements are checked (``check_methods``) before any map is computed.

    Returns:
      ``MethodComparison`` keyed by the methods' display names, in the order given.
    """
    network.input_spec.check_images(images)
    layer, f, softmax = explained_function(network, layer)
    check_methods(network, methods, layer=layer, cam_layer=cam_layer, segments=segments, ig_steps=ig_steps,
                  nt_samples=nt_samples, steps=steps, mu_grid=mu_grid, num_subsets=num_subsets, seed=seed)
    if targets is None:
        targets = layer_features(network, images).argmax(-1) if softmax else np.zeros(len(images), np.int64)
    targets = np.asarray(targets)
    width = network.output_shape(layer)[-1]
    if targets.shape != (len(images),) or not np.issubdtype(targets.dtype, np.integer) or (
            targets.size and (targets.min() < 0 or targets.max() >= width)):
        raise ArgumentError("targets", f"expected {len(images)} ints in [0, {width}) (one output of {layer} per image), "
                         f"got {targets.tolist() if targets.ndim else targets!r}")
    units, position = np.unique(targets, return_inverse=True)  # the metrics keep only the explained outputs
    common = {"params": network.variables, "units": tuple(int(u) for u in units)}
    position = position.reshape(-1)
    x = network.to_input(images)
    options = {"window": window, "stride": stride, "rise_masks": rise_masks, "rise_cells": rise_cells,
               "segments": segments, "ig_steps": ig_steps, "nt_samples": nt_samples, "stdevs": stdevs,
               "cam_layer": cam_layer, "seed": seed, "progress": progress}
    maps, scores = {}, {}
    for method in dict.fromkeys(methods):
        name = METHODS[method]
        maps[name] = attribution = method_map(network, x, method, layer=layer, targets=targets, **options)
        curves = {mode: deletion_curve(f, x, attribution, mode=mode, steps=steps, targets=position,
                                       progress=progress, **common).auc for mode in ("deletion", "insertion")}
        mu = mu_fidelity(f, x, attribution, grid=mu_grid, num_subsets=num_subsets, seed=seed, targets=position,
                         progress=progress, **common).score
        scores[name] = {"deletion_auc": curves["deletion"], "insertion_auc": curves["insertion"], "mu_fidelity": mu}
    return MethodComparison(targets, layer, maps, scores)
