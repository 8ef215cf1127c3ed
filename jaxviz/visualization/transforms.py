"""Random transformations of feature visualization: the image is shifted, scaled and rotated at every step.

A visualization that survives small random moves of the image shows structure the unit responds to,
not high-frequency patterns that exploit the exact pixel grid (Mordvintsev et al., 2015; Olah et al.,
2017). Lucid's "standard" set, for 224-pixel images, pads by 12 pixels of grey, jitters by 8,
scales by 0.9 .. 1.1, rotates by -10 .. 10 degrees and jitters by 4 again. Here the moves are one
size-preserving affine warp of the image about its centre, sampled bilinearly with grey (0.5) outside
the image (Lucid's constant padding), and the pixel amounts are scaled to the image size
(``Transforms.standard``): a 32-pixel image is shifted by at most 2 pixels along each axis.

The warp maps each output pixel ``o`` (row, column) to the input position
``c + A (o - c) - shift`` with ``c`` the image centre and ``A = R(angle)^T / scale``, which is
``scipy.ndimage.affine_transform(channel, A, offset=c - A c - shift, order=1, mode="grid-constant",
cval=0.5)`` (near the border, pixels are interpolated with the grey beyond it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError

__all__ = ["FILL", "TRANSFORM_NAMES", "Transforms", "check_transforms", "draw", "warp", "warp_matrix"]

FILL = 0.5  # grey outside the image, Lucid's constant padding
TRANSFORM_NAMES = ("jitter", "scale", "rotate")
_LUCID_SIZE = 224  # the image size Lucid's standard pixel amounts are for


@dataclasses.dataclass(frozen=True)
class Transforms:
    """The random moves of each step.

    Attributes:
      jitter: the shift in pixels along each axis is drawn uniformly from ``-jitter .. jitter`` (integers).
      scales: the scale is drawn uniformly from these.
      angles: the rotation in degrees is drawn uniformly from these.
    """

    jitter: int = 0
    scales: tuple[float, ...] = (1.0,)
    angles: tuple[float, ...] = (0.0,)

    @classmethod
    def standard(cls, size: int) -> Transforms:
        """Lucid's standard set scaled to images of ``size`` pixels: its two jitters of 8 and 4 pixels at 224
        become one jitter of ``round((8 + 4) * size / 224)`` pixels (at least 1; its pad of 12 is the grey outside
        the image here); scales 0.9 .. 1.1 in 11 steps; rotations -10 .. 10 degrees in steps of 1."""
        return cls(jitter=max(1, round(12 * size / _LUCID_SIZE)),
                   scales=tuple(1 + (i - 5) / 50 for i in range(11)),
                   angles=tuple(float(a) for a in range(-10, 11)))

    @property
    def identity(self) -> bool:
        return self.jitter == 0 and set(self.scales) == {1.0} and set(self.angles) == {0.0}


def check_transforms(transforms: Any, size: int) -> Transforms:
    """``"standard"``, ``"none"``, a sequence of names from ``TRANSFORM_NAMES`` (the standard ones kept) or a
    ``Transforms``."""
    if isinstance(transforms, Transforms):
        return transforms
    standard = Transforms.standard(size)
    if isinstance(transforms, str):
        if transforms == "standard":
            return standard
        if transforms == "none":
            return Transforms()
        raise ArgumentError("transforms", f"expected 'standard', 'none', names from {', '.join(TRANSFORM_NAMES)} "
                                          f"or a Transforms, got {transforms!r}")
    if isinstance(transforms, Sequence) and all(isinstance(t, str) for t in transforms):
        unknown = [t for t in transforms if t not in TRANSFORM_NAMES]
        if unknown:
            raise ArgumentError("transforms", f"expected names from {', '.join(TRANSFORM_NAMES)}, got {unknown[0]!r}")
        return Transforms(jitter=standard.jitter if "jitter" in transforms else 0,
                          scales=standard.scales if "scale" in transforms else (1.0,),
                          angles=standard.angles if "rotate" in transforms else (0.0,))
    raise ArgumentTypeError("transforms", f"expected 'standard', 'none', a list of names or a Transforms, got "
                                          f"{type(transforms).__name__}")


def draw(key: jax.Array, transforms: Transforms) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step's ``(shift float32 (2,), scale (), angle in degrees ())`` from ``key``."""
    k_shift, k_scale, k_angle = jax.random.split(key, 3)
    shift = jax.random.randint(k_shift, (2,), -transforms.jitter, transforms.jitter + 1).astype(jnp.float32)
    scale = jax.random.choice(k_scale, jnp.asarray(transforms.scales, jnp.float32))
    angle = jax.random.choice(k_angle, jnp.asarray(transforms.angles, jnp.float32))
    return shift, scale, angle


def warp_matrix(scale: Any, angle: Any) -> Any:
    """(2, 2) ``A = R(angle)^T / scale``: output offsets from the centre -> input offsets (rows, columns)."""
    xp = jnp if isinstance(scale, jax.Array) or isinstance(angle, jax.Array) else np
    theta = angle * (np.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    return xp.stack([xp.stack([cos, sin]), xp.stack([-sin, cos])]) / scale


def warp(image: jax.Array, shift: jax.Array, scale: jax.Array, angle: jax.Array) -> jax.Array:
    """float (H, W, C) -> (H, W, C): the image moved (see the module's docstring), bilinear, ``FILL`` outside."""
    h, w = image.shape[:2]
    centre = jnp.asarray([(h - 1) / 2, (w - 1) / 2], jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    offsets = jnp.stack([rows, cols]).reshape(2, -1) - centre[:, None]
    source = centre[:, None] + warp_matrix(scale, angle) @ offsets - shift[:, None]
    sample = jax.vmap(lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [source[0], source[1]], order=1, mode="constant", cval=FILL), in_axes=-1, out_axes=-1)
    return sample(image).reshape(h, w, image.shape[-1])
