"""Occlusion heatmaps -> image masks (the notebook's ``vis_occ``).

``heatmap_mask`` reproduces the notebook's post-processing with current
SciPy names (``scipy.ndimage.zoom`` and ``gaussian_filter``; the notebook's
``scipy.ndimage.interpolation`` / ``filters`` modules are gone).
"""

from __future__ import annotations

import numpy as np

from jaxviz.checks import ArgumentError

__all__ = ["apply_mask", "heatmap_mask", "normalize"]


def normalize(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant array becomes all zeros."""
    x = np.asarray(x, np.float64)
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi - lo <= 0 else (x - lo) / (hi - lo)


def heatmap_mask(heatmap: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5,
                 sigma: float = 2.0, low: float = 0.3) -> np.ndarray:
    """The notebook's mask: normalize, resize, smooth, threshold.

    Args:
      heatmap: float (rows, cols), e.g. one unit's ``Occlusion.grid`` slice.
      image_size: (H, W) of the image the mask is for.
      threshold: after normalizing and smoothing, pixels >= threshold are kept.
      sigma: Gaussian smoothing in image pixels.
      low: the value of masked-out pixels (the notebook's 0.3).

    Returns:
      float32 (H, W) with values 1.0 (kept) or ``low``.
    """
    from scipy.ndimage import gaussian_filter, zoom

    heatmap = np.asarray(heatmap, np.float64)
    if heatmap.ndim != 2:
        raise ArgumentError("heatmap", f"expected shape (rows, cols), got {heatmap.shape}")
    if not 0.0 <= low <= 1.0:
        raise ArgumentError("low", f"expected a value in [0, 1], got {low}")
    h, w = image_size
    mask = zoom(normalize(heatmap), (h / heatmap.shape[0], w / heatmap.shape[1]), order=1)
    mask = gaussian_filter(mask[:h, :w], sigma=sigma)
    return np.where(mask >= threshold, 1.0, low).astype(np.float32)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Multiply every channel of ``image`` (H, W, C), uint8 or float, by ``mask`` (H, W).

    Returns:
      An array of ``image``'s dtype and shape.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[:2] != np.shape(mask):
        raise ArgumentError("mask", f"expected shape {image.shape[:2]} to match the image, got {np.shape(mask)}")
    out = image.astype(np.float32) * np.asarray(mask, np.float32)[..., None]
    return out.round().astype(image.dtype) if np.issubdtype(image.dtype, np.integer) else out.astype(image.dtype)
