"""The perturbation methods a dataset run can stream, as mask families shared by every image.

Each method becomes a ``MaskFamily`` (made on the device) and the shape of
one image's map:

* ``occlusion``: every window position (``window``, ``stride``, ``anchor``
  as in ``occlude``); the map is the occlusion grid (rows, cols), positive
  where hiding the window lowers the output.
* ``ablation``: a ``segments`` x ``segments`` grid of cells removed one at a
  time (``grid_segments``); the map is (segments, segments).
* ``rise``: ``num_masks`` random masks of ``cells`` x ``cells`` cells kept
  with probability ``p`` (``seed``); the map is RISE's saliency (H, W).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, check_int, check_seed
from jaxviz.engine.perturb import MaskFamily
from jaxviz.methods.ablation import grid_segments, segment_generator
from jaxviz.methods.occlusion import check_windows, window_masks
from jaxviz.methods.rise import check_keep_probability, rise_generator, seed_key

__all__ = ["RUN_METHODS", "method_family"]

RUN_METHODS = ("occlusion", "ablation", "rise")


def method_family(method: Any, image_shape: tuple[int, int, int], *, window: Any, stride: Any, anchor: Any,
                  segments: Any, num_masks: Any, cells: Any, p: Any, seed: Any
                  ) -> tuple[MaskFamily, tuple[int, int], float, dict]:
    """Check one method's options (errors name them) and build its masks.

    Returns:
      ``(family, map_shape (R, C), scale, settings)``: ``settings`` holds the
      options that define the run (and the window spans of occlusion).
    """
    h, w, c = image_shape
    if method == "occlusion":
        rows, cols = check_windows(jnp.zeros((1, h, w, c)), window, stride, anchor)
        options = {"window": list(np.broadcast_to(window, 2).tolist()), "stride": list(np.broadcast_to(stride, 2).tolist()),
                   "anchor": anchor, "row_spans": rows.tolist(), "col_spans": cols.tolist()}
        return window_masks((h, w), rows, cols), (len(rows), len(cols)), 1.0, options
    if method == "ablation":
        cells_side = check_int(segments, "segments", 1, min(h, w))
        labels = grid_segments(h, w, cells=cells_side)
        family = MaskFamily(segment_generator(False), jnp.asarray(labels[None]), cells_side * cells_side, (False,))
        return family, (cells_side, cells_side), 1.0, {"segments": cells_side}
    if method == "rise":
        num_masks = check_int(num_masks, "num_masks", 1)
        cells = check_int(cells, "cells", 1, min(h, w))
        p = check_keep_probability(p)
        seed = check_seed(seed)
        family = MaskFamily(rise_generator(cells, (h, w)), (seed_key(seed), jnp.float32(p)), num_masks,
                            (cells, (h, w)))
        return family, (h, w), 1.0 / (num_masks * p), {"num_masks": num_masks, "cells": cells, "p": p,
                                                       "seed": seed}
    raise ArgumentError("method", f"expected one of {', '.join(RUN_METHODS)}, got {method!r}")
