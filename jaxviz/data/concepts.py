"""Concept images for TCAV: folders of examples, or built-in procedural ones that need no download.

``procedural_concepts(32, 32)`` draws, at any input size, sets of images of
simple human concepts: stripes in three orientations, dots, checkerboards,
solid colours and noise textures. Each image has its own random colours,
scale and phase, so a concept is its pattern, not one picture. The same
``seed`` gives the same images on every machine (numpy's PCG64).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxviz.checks import ArgumentError, PathNotFoundError, check_int, check_seed
from jaxviz.data.images import _read_rgb

__all__ = ["CONCEPTS", "load_concept_folder", "procedural_concepts"]

CONCEPTS = ("stripes-horizontal", "stripes-vertical", "stripes-diagonal", "dots", "checkerboard", "red", "green",
            "blue", "noise")


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours at least 96 apart in brightness, so the pattern shows."""
    dark = rng.uniform(0, 100, 3)
    return dark, np.clip(dark + rng.uniform(96, 200, 3), 0, 255)


def _pattern(name: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float (H, W, 3) in [0, 255]: one image of the concept ``name``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = max(min(height, width), 8)
    period = rng.uniform(scale / 10, scale / 4)
    phase = rng.uniform(0, period)
    a, b = _two_colours(rng)
    if name.startswith("stripes"):
        along = {"stripes-horizontal": y, "stripes-vertical": x,
                 "stripes-diagonal": (x + y if rng.random() < 0.5 else x - y) / np.sqrt(2)}[name]
        on = ((along + phase) % period) < period / 2
    elif name == "checkerboard":
        on = (((x + phase) // (period / 2) + (y + phase) // (period / 2)) % 2) == 1
    elif name == "dots":
        cy, cx = (y + phase) % period - period / 2, (x + rng.uniform(0, period)) % period - period / 2
        on = cy ** 2 + cx ** 2 < (period * rng.uniform(0.2, 0.3)) ** 2
    elif name in ("red", "green", "blue"):
        colour = rng.uniform(0, 60, 3)
        colour[("red", "green", "blue").index(name)] = rng.uniform(170, 255)
        return np.clip(colour + rng.normal(0, 6, (height, width, 3)), 0, 255)
    else:  # noise: value noise at a random scale, in random colours
        coarse = rng.random((int(height / period) + 2, int(width / period) + 2))
        rows = np.clip((y / period).astype(int), 0, coarse.shape[0] - 1)
        cols = np.clip((x / period).astype(int), 0, coarse.shape[1] - 1)
        mix = 0.5 * coarse[rows, cols] + 0.5 * rng.random((height, width))
        return a + mix[..., None] * (b - a)
    return np.where(on[..., None], b, a) + rng.normal(0, 4, (height, width, 3))


def procedural_concepts(height: int, width: int, channels: int = 3, *, count: int = 50,
                        names: tuple[str, ...] = CONCEPTS, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` images of each named concept at the given size.

    Args:
      height, width: the network's input size.
      channels: 3 (RGB) or 1 (the images' luma).
      count: images per concept.
      names: concepts from ``CONCEPTS``.
      seed: the images' random colours, scales and phases.

    Returns:
      name -> uint8 (count, height, width, channels).
    """
    height, width = check_int(height, "height", 4), check_int(width, "width", 4)
    if channels not in (1, 3):
        raise ArgumentError("channels", f"expected 1 or 3, got {channels!r}")
    count, seed = check_int(count, "count", 1), check_seed(seed)
    if isinstance(names, str) or not names or any(n not in CONCEPTS for n in names):
        raise ArgumentError("names", f"expected concepts from {', '.join(CONCEPTS)}, got {names!r}")
    out = {}
    for name in names:
        rng = np.random.default_rng([seed, CONCEPTS.index(name)])  # a concept's images do not depend on the others
        images = np.stack([_pattern(name, rng, height, width) for _ in range(count)])
        if channels == 1:
            images = images @ np.array([0.299, 0.587, 0.114])[:, None]
        out[name] = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return out


def load_concept_folder(folder: str | os.PathLike, *, name: str = "concept") -> np.ndarray:
    """The images of one flat folder (``folder/*.png|jpg|...``, sorted by name; hidden files skipped), read as
    ``load_image_folder`` reads a class folder: uint8 (N, H, W, 3), all of one size.

    Raises:
      FileNotFoundError: ``folder`` does not exist or is not a folder; ValueError: no images in it, or mixed
      sizes. Both name ``name``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PathNotFoundError(f"{name}: expected a folder of images, got {str(folder)!r} "
                                f"({'a file' if folder.exists() else 'does not exist'})")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ArgumentError(name, f"expected images in {str(folder)!r}, found none")
    images = [_read_rgb(p) for p in files]
    if len({im.shape for im in images}) > 1:
        sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
        raise ArgumentError(name, f"expected images of one size in {str(folder)!r}, got sizes {', '.join(sizes)}")
    return np.stack(images)
