"""Which map to trust? Every registered method side by side, scored by faithfulness metrics.

``compare_methods(network, images)`` explains each image's target output
(the predicted class of a classifier, by default: its softmax probability)
with the chosen methods of the registry (``jaxviz.methods.registry``) — by
default all of them: occlusion, RISE and feature ablation on the fused
perturbation engine; saliency, input x gradient, integrated gradients,
SmoothGrad and Grad-CAM on the gradient engine — then scores every map with the
deletion and insertion AUCs (Petsiuk et al. 2018: lower deletion, higher
insertion is better) and MuFidelity (Bhatt et al. 2020: higher is better).
``attribute`` runs one method by name, for the report and the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from jaxviz.checks import check_seed, renamed_arguments
from jaxviz.engine.activations import layer_features
from jaxviz.evaluation.faithfulness import check_mu_fidelity_lattice, check_steps, deletion_curve, mu_fidelity
from jaxviz.methods import registry
from jaxviz.methods.base import Attribution, Explained, Method, explain, target_positions
from jaxviz.models.network import Network

__all__ = ["METRICS", "MethodComparison", "attribute", "check_methods", "compare_methods"]

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
      settings: method name -> the options that made its maps (``Attribution.settings``).
    """

    targets: np.ndarray
    layer: str
    maps: dict
    scores: dict
    settings: dict = dataclasses.field(default_factory=dict)

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


def attribute(network: Network, x: Any, method: str, *, targets: Any, layer: str | None = None,
              options: Mapping[str, Any] | None = None, chunk_size: int | None = None,
              memory_budget: int | None = None, progress: bool = False) -> Attribution:
    """One registered method's map of each image's target.

    Args:
      network: the model; x: float (n, H, W, C) model input.
      method: a registered name (``jaxviz.methods.registry.names()``).
      targets: int (n,): the explained output of each image (an index of the explained function's outputs).
      layer: the explained layer (``jaxviz.methods.base.explain``: a classifier's softmax by default).
      options: the method's options by name (its options dataclass's fields; the others' are ignored).
      chunk_size, memory_budget, progress: the engines' execution options.

    Returns:
      ``Attribution`` with ``maps`` float32 (n, H, W).
    """
    chosen = registry.get(method)
    explained = explain(network, layer)
    opts = chosen.make_options(options)  # an option the method does not have is refused
    chosen.check(explained, opts)
    targets = _checked_targets(explained, targets, len(x))
    return chosen.run(explained, x, targets=targets, options=opts,
                      execution={"chunk_size": chunk_size, "memory_budget": memory_budget, "progress": progress})


def _checked_targets(explained: Explained, targets: Any, n: int) -> np.ndarray:
    """int64 (n,) outputs of the explained layer (``target_positions``' check, naming the layer)."""
    return target_positions(targets, n, None, explained.outputs, of=explained.layer)


def check_methods(network: Network, methods: Sequence[str], *, layer: str | None = None,
                  steps: int | None = None, mu_grid: int | None = None, num_subsets: int = 128, seed: int = 0,
                  **options: Any) -> tuple[Method, ...]:
    """Every chosen method's requirements (``Method.check``: its options and what it needs of the network), the
    deletion / insertion ``steps`` and MuFidelity's lattice (each unless None) and the ``seed``, before any
    of them runs.

    Returns:
      the methods. Raises ``ArgumentError`` naming the argument or option.
    """
    chosen = registry.resolve(methods)
    explained = explain(network, layer)
    h, w = network.input_spec.shape[:2]
    check_seed(seed)
    if steps is not None:
        check_steps(steps, h * w)
    if mu_grid is not None:
        with renamed_arguments({"grid": "mu_grid"}):
            check_mu_fidelity_lattice(mu_grid, num_subsets, h, w)
    for method, opts in registry.method_options(chosen, {"seed": seed, **options}).items():
        registry.METHODS[method].check(explained, opts)
    return chosen


def compare_methods(network: Network, images: np.ndarray, *, targets: np.ndarray | None = None,
                    layer: str | None = None, methods: Sequence[str] | None = None, steps: int = 50,
                    mu_grid: int = 8, num_subsets: int = 128, seed: int = 0, progress: bool = False,
                    **options: Any) -> MethodComparison:
    """The chosen methods' maps of each image's target, with their faithfulness.

    Args:
      network: the model.
      images: uint8 (n, H, W, C) of the network's input size.
      targets: int (n,) outputs to explain; default the predicted class of a
        classifier (explaining its softmax), or unit 0 of ``layer`` otherwise.
      layer: for a network without class names, the layer whose unit is explained
        (default ``network.feature_layer``); a classifier's output layer by default.
      methods: registered names (default None: all of them, ``registry.names()``, at the call).
      steps: deletion / insertion steps, at most the pixels of an image.
      mu_grid, num_subsets: MuFidelity's grid of cells and number of random subsets.
      seed: MuFidelity's seed, and the methods' (RISE's masks, SmoothGrad's noise) unless ``options``
        give one; in [0, 2**32).
      progress: progress bars.
      **options: the methods' options by name (``window=8``, ``num_masks=1000``, ``n_steps=16``...: the
        fields of their options dataclasses, defaults there); an option several methods share goes to each.

    Every method's requirements are checked (``check_methods``) before any map is computed.

    Returns:
      ``MethodComparison`` keyed by the methods' display names, in the order given.
    """
    network.input_spec.check_images(images)
    explained = explain(network, layer)
    methods = registry.names() if methods is None else methods
    options = {"seed": seed, **options}
    chosen = check_methods(network, methods, layer=explained.layer, steps=steps, mu_grid=mu_grid,
                           num_subsets=num_subsets, **options)
    if targets is None:
        targets = (layer_features(network, images).argmax(-1) if explained.softmax
                   else np.zeros(len(images), np.int64))
    targets = _checked_targets(explained, targets, len(images))
    common = {"params": network.variables, "units": tuple(int(u) for u in np.unique(targets)), "targets": targets}
    x = network.to_input(images)
    per_method = registry.method_options(chosen, options)
    maps, scores, settings = {}, {}, {}
    for method in chosen:
        made = method.run(explained, x, targets=targets, options=per_method[method.name],
                          execution={"progress": progress})
        attribution = maps[method.label] = made.maps
        settings[method.label] = made.settings
        curves = {mode: deletion_curve(explained.f, x, attribution, mode=mode, steps=steps,
                                       progress=progress, **common).auc for mode in ("deletion", "insertion")}
        mu = mu_fidelity(explained.f, x, attribution, grid=mu_grid, num_subsets=num_subsets, seed=seed,
                         progress=progress, **common).score
        scores[method.label] = {"deletion_auc": curves["deletion"], "insertion_auc": curves["insertion"],
                                "mu_fidelity": mu}
    return MethodComparison(targets, explained.layer, maps, scores, settings)
