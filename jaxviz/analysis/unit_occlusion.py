"""The notebook's occlusion study: occlude each shown unit's top-K images, regrouped per unit.

``occlude_top_images(network, study, images, layer=...)`` runs one fused
occlusion over every (unit, top image) pair, keeping all shown units at
once, then keeps for each image the map of the unit it is a top image of,
and turns it into the notebook's mask (``vis_occ``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxviz.analysis.masks import apply_mask, heatmap_mask
from jaxviz.analysis.units import UnitStudy, per_unit
from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.methods.occlusion import Occlusion, occlude
from jaxviz.models.network import Network

__all__ = ["UNIT_WINDOW", "UnitOcclusion", "occlude_top_images"]

# The unit study's occluder size (pixels): occlude_top_images and the report (ReportSettings.window, which its
# method comparison uses too). The notebook's 11 x 11 window; deliberately kept apart from the attribution methods'
# jaxviz.methods.occlusion.WINDOW (8), so neither default changes the other's results.
UNIT_WINDOW = 11


@dataclasses.dataclass(frozen=True)
class UnitOcclusion:
    """Occlusion of each shown unit's top-K images, column j for ``units[j]``.

    Attributes:
      units: the shown units.
      images: uint8 (K, units, H, W, C): the top images, best first.
      heatmaps: float32 (K, units, rows, cols): the unit's activation minus its
        activation with the window at each position hidden (positive: hiding lowers it).
      pixel: float32 (K, units, H, W): per pixel, the mean over the windows covering it.
      masked: uint8 (K, units, H, W, C): the images under the notebook's mask.
      occlusion: the engine's result for all pairs (unit-major rows, every shown unit).
    """

    units: tuple[int, ...]
    images: np.ndarray
    heatmaps: np.ndarray
    pixel: np.ndarray
    masked: np.ndarray
    occlusion: Occlusion


def occlude_top_images(network: Network, study: UnitStudy, images: np.ndarray, *, layer: str, window: int = UNIT_WINDOW,
                       stride: int = 4, anchor: str = "centered", fill: Any = 0.0, threshold: float = 0.5,
                       sigma: float = 2.0, progress: bool = False) -> UnitOcclusion:
    """Occlude the top-K images of every unit in ``study.units`` at ``layer``.

    Args:
      network: the model the study was made on.
      study: from ``study_units`` on ``layer``'s scores over ``images``.
      images: uint8 (N, H, W, C): the dataset the study's indices point into.
      layer: the layer whose units were studied (conv maps are averaged over space, as in
        ``unit_scores``).
      window, stride, anchor, fill: as in ``occlude`` (``fill`` in model-input space).
      threshold, sigma: the mask, as in ``heatmap_mask``.
      progress: show the engine's progress bar.

    Returns:
      ``UnitOcclusion``.

    Raises:
      TypeError: not a ``Network`` or ``UnitStudy``; images not uint8.
      ValueError: unknown layer; a layer with another number of units than the study's, or other
        images than the study's (its indices would pick the wrong images or units).
    """
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network (e.g. weights.network), got {type(network).__name__}")
    if not isinstance(study, UnitStudy):
        raise ArgumentTypeError("study", f"expected a UnitStudy from jaxviz.study_units, got {type(study).__name__}")
    network.check_layer(layer)
    units = network.num_units(layer)  # network.score_fn's scores, the study's
    if study.scores.shape[1] != units:
        raise ArgumentError("layer", f"{layer!r} has {units} units, but the study scores {study.scores.shape[1]}: "
                         "pass the layer the study was made on")
    if len(images) != study.scores.shape[0]:
        raise ArgumentError("images", f"expected the {study.scores.shape[0]} images the study was made on (its indices "
                         f"point into them), got {len(images)}")
    flat = study.shown_indices()
    owner = study.shown_owner()
    x = network.to_input(images[flat])
    occ = occlude(network.score_fn(layer), x, params=network.variables, window=window, stride=stride,
                  anchor=anchor, fill=fill, units=study.units, progress=progress)
    rows = np.arange(len(flat))
    heat = occ.grid[rows, ..., owner]  # (units * K, rows, cols): each image's own unit
    pixel = occ.pixel_map(np.asarray(study.units)[owner])  # each image's own unit (an output of f)
    masked = np.stack([apply_mask(images[i], heatmap_mask(h, images.shape[1:3], threshold=threshold, sigma=sigma))
                       for i, h in zip(flat, heat)])
    u = len(study.units)
    return UnitOcclusion(study.units, per_unit(images[flat], u), per_unit(heat, u), per_unit(pixel, u),
                         per_unit(masked, u), occ)
