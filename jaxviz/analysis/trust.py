"""Which map to trust? Perturbation methods side by side, scored by faithfulness metrics.

``compare_methods(network, images)`` explains each image's target output
(the predicted class of a classifier, by default) with occlusion, RISE and
feature ablation over a grid of segments, all on the fused perturbation
engine, then scores every map with the deletion and insertion AUCs
(Petsiuk et al. 2018: lower deletion, higher insertion is better) and
MuFidelity (Bhatt et al. 2020: higher is better).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxviz.attribution.ablation import feature_ablation, grid_segments
from jaxviz.attribution.faithfulness import deletion_curve, mu_fidelity
from jaxviz.attribution.rise import rise
from jaxviz.engine.activations import layer_features
from jaxviz.engine.occlusion import occlude
from jaxviz.models.network import Network

__all__ = ["MethodComparison", "compare_methods"]

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

    def ranking(self) -> list[str]:
        """Methods from most to least faithful: mean rank over the three metrics (ties by name)."""
        means, methods = self.means(), sorted(self.scores)
        ranks = {m: 0.0 for m in methods}
        for metric in METRICS:
            sign = 1 if BETTER[metric] == "lower" else -1
            order = sorted(methods, key=lambda m: (sign * means[m][metric], m))
            for rank, m in enumerate(order):
                ranks[m] += rank / len(METRICS)
        return sorted(methods, key=lambda m: (ranks[m], m))

    def sentence(self) -> str:
        """One sentence naming the most faithful method, with the best method by each metric."""
        means = self.means()
        best = []
        for metric in METRICS:
            pick = min if BETTER[metric] == "lower" else max
            winner = pick(sorted(means), key=lambda m: means[m][metric])
            best.append(f"{metric.replace('_', ' ')}: {winner} ({means[winner][metric]:.3f})")
        return (f"On this model {self.ranking()[0]} is the most faithful method by mean rank over the three "
                f"metrics; best by {', '.join(best)}.")


@functools.lru_cache(maxsize=16)
def _probabilities(network: Network):
    fn = network.layer_fn(network.output_layer)
    return lambda variables, x: jax.nn.softmax(fn(variables, x).reshape(x.shape[0], -1), axis=-1)


def compare_methods(network: Network, images: np.ndarray, *, targets: np.ndarray | None = None,
                    layer: str | None = None, window: int = 8, stride: int = 4, rise_masks: int = 1000,
                    rise_cells: int = 7, segments: int = 8, steps: int = 50, mu_grid: int = 8,
                    num_subsets: int = 128, seed: int = 0, progress: bool = False) -> MethodComparison:
    """Occlusion, RISE and feature-ablation maps of each image's target, with their faithfulness.

    Args:
      network: the model.
      images: uint8 (n, H, W, C) of the network's input size.
      targets: int (n,) outputs to explain; default the predicted class of a
        classifier (explaining its softmax), or unit 0 of ``layer`` otherwise.
      layer: for a network without class names, the layer whose unit is explained
        (default ``network.feature_layer``); a classifier's output layer by default.
      window, stride: the occluder.
      rise_masks, rise_cells: RISE's number of masks and grid size.
      segments: feature ablation over a ``segments x segments`` grid.
      steps: deletion / insertion steps.
      mu_grid, num_subsets: MuFidelity's grid of cells and number of random subsets.
      seed: RISE's and MuFidelity's seed.
      progress: progress bars.

    Returns:
      ``MethodComparison``.
    """
    network.input_spec.check_images(images)
    if network.is_classifier and layer in (None, network.output_layer):
        layer, f = network.output_layer, _probabilities(network)
        if targets is None:
            targets = layer_features(network, images).argmax(-1)
    else:
        layer = layer or network.feature_layer
        network.check_layer(layer)
        f = network.score_fn(layer)
        targets = np.zeros(len(images), np.int64) if targets is None else targets
    targets = np.asarray(targets)
    width = network.output_shape(layer)[-1]
    if targets.shape != (len(images),) or not np.issubdtype(targets.dtype, np.integer) or (
            targets.size and (targets.min() < 0 or targets.max() >= width)):
        raise ValueError(f"targets: expected {len(images)} ints in [0, {width}) (one output of {layer} per image), "
                         f"got {targets.tolist() if targets.ndim else targets!r}")
    units, position = np.unique(targets, return_inverse=True)  # only the explained outputs are kept
    units = tuple(int(u) for u in units)
    x = network.to_input(images)
    h, w = x.shape[1:3]
    rows = np.arange(len(images))
    common = {"params": network.variables, "units": units}
    occ = occlude(f, x, window=window, stride=stride, progress=progress, **common)
    ris = rise(f, x, num_masks=rise_masks, cells=rise_cells, seed=seed, progress=progress, **common)
    abl = feature_ablation(f, x, segments=grid_segments(h, w, cells=segments), progress=progress, **common)
    maps = {"occlusion": occ.pixel_map(position), "RISE": ris.maps[rows, ..., position],
            "feature ablation": abl.maps[rows, ..., position]}
    scores = {}
    for name, attribution in maps.items():
        curves = {mode: deletion_curve(f, x, attribution, mode=mode, steps=steps, targets=position,
                                       progress=progress, **common).auc for mode in ("deletion", "insertion")}
        mu = mu_fidelity(f, x, attribution, grid=mu_grid, num_subsets=num_subsets, seed=seed, targets=position,
                         progress=progress, **common).score
        scores[name] = {"deletion_auc": curves["deletion"], "insertion_auc": curves["insertion"], "mu_fidelity": mu}
    return MethodComparison(targets, layer, {k: np.asarray(v, np.float32) for k, v in maps.items()}, scores)
