"""What units look for, with the numbers that say how far to trust the picture.

A feature visualization can mislead (Geirhos et al., ICML 2024, make them show anything; people predict a
unit better from its natural exemplars than from its visualization, Borowski et al., ICLR 2021). So every
picture here comes with two numbers taken from a dataset:

* the **exemplar ratio**: the activation the picture reaches over the unit's largest activation on the data
  (above 1: the picture excites the unit more than any image of the data);
* for a classifier, the **class the network predicts for the picture**, beside the **majority class of the
  unit's top-K images**.

A unit never above 0 on the data is dead there: it is listed, not drawn (its ratio would be undefined).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxviz.analysis.topk import TopK
from jaxviz.analysis.units import unit_selectivity
from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.engine.activations import layer_features
from jaxviz.models.network import Network
from jaxviz.visualization.visualize import Visualization, check_visualization, visualize

__all__ = ["UnitVisualizations", "visualize_with_exemplars"]


@dataclasses.dataclass(frozen=True)
class UnitVisualizations:
    """Feature visualizations of the live chosen units, beside their dataset exemplars.

    Attributes:
      visualization: the drawn units' ``Visualization`` (U units, B images each).
      dead: the chosen units never above 0 on the data, not drawn.
      exemplar_ratio: float32 (U,): each unit's best picture's activation over its largest on the data.
      predicted_class: int64 (U, B): the class the network predicts for each picture; ``None`` when the network
        has no class names.
      majority_class: int64 (U,): the most frequent class among the unit's top-K images of the data.
      majority_share: float64 (U,): that class's share of the top K.
    """

    visualization: Visualization
    dead: tuple[int, ...]
    exemplar_ratio: np.ndarray
    predicted_class: np.ndarray | None
    majority_class: np.ndarray
    majority_share: np.ndarray

    @property
    def units(self) -> tuple[int, ...]:
        """The drawn units."""
        return self.visualization.units

    def notes(self, class_names: Sequence[str] | None = None) -> list[str]:
        """One short caption per drawn unit: ``"x2.3 cat"`` (exemplar ratio, predicted class of its first picture)."""
        notes = [f"x{r:.1f}" for r in self.exemplar_ratio]
        if self.predicted_class is not None and class_names is not None:
            notes = [f"{n} {class_names[int(p[0])]}" for n, p in zip(notes, self.predicted_class)]
        return notes


def visualize_with_exemplars(network: Network, layer: str, top: TopK, labels: np.ndarray, num_classes: int,
                             units: Sequence[int] | None = None, **options: Any) -> UnitVisualizations:
    """``visualize`` the live ``units`` of ``layer`` and set each picture beside the unit's top-K images.

    Args:
      network, layer: as ``visualize``.
      top: ``TopK`` of the layer's ``unit_scores`` over a dataset: (K, every unit of the layer).
      labels: int (N,): the dataset's classes, in [0, num_classes).
      num_classes: the number of classes of ``labels``.
      units: the units to draw (default all); those never above 0 on the data are listed in ``dead``.
      **options: ``visualize``'s options (steps, param, seed...).

    Raises:
      ``ArgumentError`` naming the argument, before anything is compiled: every ``visualize`` check, a ``top``
      of another width than the layer, and ``units`` that are all dead.
    """
    check_visualization(network, layer, units, **options)
    width = network.num_units(layer)
    if not isinstance(top, TopK):
        raise ArgumentTypeError("top", f"expected a TopK (top_k_images of the layer's unit scores), got "
                                       f"{type(top).__name__}")
    if top.values.shape[1] != width:
        raise ArgumentError("top", f"expected the top K of every unit of {layer} ({width}), got {top.values.shape[1]}")
    chosen = tuple(range(width)) if units is None else tuple(int(u) for u in units)
    best = top.values[0]
    dead = tuple(u for u in chosen if not best[u] > 0)
    live = [u for u in chosen if best[u] > 0]
    if not live:
        raise ArgumentError("units", f"expected at least one unit of {layer} active on the data (above 0); every "
                                     f"chosen unit is dead there, got {list(dead[:8])}")
    drawn = visualize(network, layer, live, **options)
    predicted = None
    if network.is_classifier:
        pictures = drawn.images.reshape(-1, *drawn.images.shape[2:])
        predicted = np.asarray(layer_features(network, pictures, devices=options.get("devices"))).argmax(-1).reshape(
            drawn.images.shape[:2])
    selectivity = unit_selectivity(top.indices[:, live], labels, num_classes)
    return UnitVisualizations(drawn, dead, drawn.exemplar_ratio(top), predicted, selectivity.majority_class,
                              selectivity.score)
