"""Conv kernels laid out as an image grid (the notebook's ``display_filters``)."""

from __future__ import annotations

import numpy as np

from jaxviz.analysis.masks import normalize
from jaxviz.checks import ArgumentError

__all__ = ["filter_grid"]


def filter_grid(kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lay out conv kernels for display (the notebook's ``display_filters``).

    Kernels with 3 input channels are shown as RGB, each min-max normalized
    to [0, 1]; others as the mean over input channels, in gray, normalized.
    The grid is ceil(sqrt(out)) square; cells past the last kernel are blank.

    Args:
      kernels: (kh, kw, in, out).

    Returns:
      ``(cells, filled)``: float32 (rows, cols, kh, kw, 3) in [0, 1] (blank
      cells are white, 1.0) and bool (rows, cols), True where a kernel is.
    """
    kernels = np.asarray(kernels, np.float32)
    if kernels.ndim != 4:
        raise ArgumentError("kernels", f"expected shape (kh, kw, in, out), got {kernels.shape}")
    kh, kw, cin, cout = kernels.shape
    side = int(np.ceil(np.sqrt(cout)))
    cells = np.ones((side * side, kh, kw, 3), np.float32)
    for p in range(cout):
        k = kernels[..., p]
        cells[p] = normalize(k) if cin == 3 else normalize(k.mean(-1))[..., None]
    filled = np.arange(side * side) < cout
    return cells.reshape(side, side, kh, kw, 3), filled.reshape(side, side)
