"""Checks of the engines' arguments, before anything is compiled: each error names the argument,
what was expected and what was given."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError

__all__ = ["check_images", "check_x", "fill_array", "unit_indices"]




def unit_indices(units: Any, width: int, name: str = "units") -> tuple[int, ...]:
    """Validate a selection of output units: integer indices, or a boolean mask of length ``width``.

    Args:
      units: a sequence or array of ints in ``[0, width)`` (order kept, repeats
        allowed), or a boolean mask of shape ``(width,)`` selecting the units
        where it is True (in increasing order).
      width: size of the output axis the units index.

    Returns:
      The indices as a tuple of Python ints.

    Raises:
      TypeError: floats, strings or other non-integer values (``3.7`` is not
        rounded to a unit).
      ValueError: empty, out of range, or a mask of the wrong length.
    """
    if isinstance(units, (str, bytes)) or not hasattr(units, "__len__") and not isinstance(units, np.ndarray):
        raise ArgumentTypeError(f"{name}", f"expected a sequence of int indices or a boolean mask, got {type(units).__name__}")
    arr = np.asarray(units)
    if arr.dtype == bool:
        if arr.shape != (width,):
            raise ArgumentError(f"{name}", f"a boolean mask must have shape ({width},) (one entry per unit), "
                             f"got shape {arr.shape}")
        arr = np.flatnonzero(arr)
    elif arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ArgumentTypeError(f"{name}", f"expected int indices (or a boolean mask), got dtype {arr.dtype}: {units!r}")
    indices = tuple(int(u) for u in arr.reshape(-1))
    if not indices or min(indices) < 0 or max(indices) >= width:
        raise ArgumentError(f"{name}", f"expected at least one index in [0, {width}) of f's last output axis, "
                         f"got {list(indices)}")
    return indices



def check_images(images: Any, name: str = "images") -> jax.Array:
    """A float (N, H, W, C) batch of model input with N >= 1 and finite values; errors name ``name``."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise ArgumentTypeError(name, f"expected an array (N, H, W, C), got {type(images).__name__}")
    if images.ndim != 4:
        raise ArgumentError(name, f"expected rank 4 (N, H, W, C), got shape {tuple(images.shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ArgumentTypeError(name, f"expected a floating dtype (model input: convert uint8 pixels with "
                        f"network.to_input(images)), got {images.dtype}")
    if images.shape[0] == 0:
        raise ArgumentError(name, "expected at least one image, got N = 0")
    if not bool(jnp.isfinite(jnp.asarray(images)).all()):
        raise ArgumentError(name, "contains NaN or infinite values")
    return jnp.asarray(images)


def fill_array(fill: Any, images: jax.Array, blur_sigma: float, name: str = "fill") -> tuple[jax.Array, bool]:
    """The fill as (H, W, C)-broadcastable shared array, or (N, H, W, C) per image; errors name ``name``."""
    n, h, w, c = images.shape
    expected = f"a number, per-channel ({c},), image ({h}, {w}, {c}) or per-image ({n}, {h}, {w}, {c}) values, or 'blur'"
    if isinstance(fill, str):
        if fill != "blur":
            raise ArgumentError(f"{name}", f"expected {expected}; got the string {fill!r}")
        if not isinstance(blur_sigma, (int, float, np.integer, np.floating)) or not 0 < blur_sigma < np.inf:
            raise ArgumentError("blur_sigma", f"expected a positive number of pixels, got {blur_sigma!r}")
        from scipy.ndimage import gaussian_filter
        blurred = gaussian_filter(np.asarray(images, np.float32), sigma=(0, blur_sigma, blur_sigma, 0))
        return jnp.asarray(blurred, images.dtype), True
    if fill is None or isinstance(fill, (bool, np.bool_)) or not (
            isinstance(fill, (int, float, np.number, np.ndarray, jax.Array, list, tuple))):
        hint = " (convert it with .numpy() first)" if type(fill).__module__.startswith("torch") else ""
        raise ArgumentTypeError(f"{name}", f"expected {expected}; got {type(fill).__name__}{hint}")
    try:
        arr = jnp.asarray(fill, images.dtype)
    except (TypeError, ValueError) as e:
        raise ArgumentTypeError(f"{name}", f"expected {expected}; got {fill!r} ({e})") from None
    allowed = {(): False, (c,): False, (h, w, c): False, (n, h, w, c): True}
    if arr.shape not in allowed:
        raise ArgumentError(f"{name}", f"expected a scalar, shape ({c},), ({h}, {w}, {c}) or ({n}, {h}, {w}, {c}), "
                         f"or 'blur'; got shape {tuple(arr.shape)}")
    if not bool(jnp.isfinite(arr).all()):
        raise ArgumentError(f"{name}", "contains NaN or infinite values")
    per_image = allowed[arr.shape]
    return (arr if per_image else jnp.broadcast_to(arr, (h, w, c))), per_image





def check_x(x: Any) -> jax.Array:
    """``check_images`` for a method whose argument is called ``x``: the same checks, errors naming ``x``."""
    return check_images(x, "x")
