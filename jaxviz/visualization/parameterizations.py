"""Image parameterizations of feature visualization: what the optimizer changes, and how it becomes an image.

An image of size (H, W) with 3 channels is made from its parameters in two steps (Olah et al.,
"Feature Visualization", Distill 2017, and Lucid's ``param.image``):

1. **the parameters to an unbounded image** ``t`` (H, W, 3): ``"pixel"`` uses the parameters as they
   are; ``"fourier"`` reads them as a real-FFT spectrum (real and imaginary parts, (2, 3, H, W // 2 + 1))
   scaled by ``1 / frequency`` (``fourier_scale``), so that low frequencies move first and the image is
   smooth, then ``irfft2`` and a division by 4, as Lucid does; ``"maco"`` (Fel et al., "Unlocking Feature
   Visualization for Deeper Networks with MAgnitude Constrained Optimization", NeurIPS 2023) optimizes
   the phase only: the magnitude is fixed to the mean spectrum of natural images (``mean_spectrum``), the
   phase is that of a real latent image (so it is always a real image's phase), and the image is
   standardized (``maco_image``);
2. **colours**: with decorrelation, ``t``'s colour vector is multiplied by the square root of the RGB
   covariance of natural images (``colour_matrix``, computed from a dataset: the optimizer then moves
   along decorrelated colour directions); then a sigmoid maps it into [0, 1] (``squash``).

Every function here is pure and works on one image; the visualization ``vmap``s it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError
from jaxviz.data import load_sample
from jaxviz.data.images import check_uint8_images
from jaxviz.models.network import resize_images

__all__ = ["INIT_SD", "PARAMETERIZATIONS", "colour_matrix", "fourier_image", "fourier_scale", "init_params",
           "maco_image", "maco_spectrum", "mean_spectrum", "param_shape", "sample_colour_matrix", "sample_spectrum",
           "to_image"]

PARAMETERIZATIONS = ("pixel", "fourier", "maco")
INIT_SD = 0.01  # Lucid's: the parameters start as small Gaussian noise, a nearly grey image


def fourier_scale(height: int, width: int, decay_power: float = 1.0) -> np.ndarray:
    """float32 (H, W // 2 + 1): Lucid's spectrum scale ``sqrt(H * W) / max(f, 1 / max(H, W)) ** decay_power`` at each
    frequency ``f = sqrt(fy ** 2 + fx ** 2)`` of ``numpy.fft.rfft2``'s layout (cycles per pixel)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(frequency, 1.0 / max(height, width)) ** decay_power
    return (scale * np.sqrt(height * width)).astype(np.float32)


def fourier_image(spectrum: jax.Array, scale: jax.Array, size: tuple[int, int]) -> jax.Array:
    """float (2, C, H, W // 2 + 1) real and imaginary parts -> float32 (H, W, C): ``irfft2((re + i im) * scale) / 4``
    per channel (Lucid's ``fft_image``)."""
    z = (spectrum[0] + 1j * spectrum[1]) * scale
    image = jnp.fft.irfft2(z, s=size, axes=(-2, -1))
    return jnp.moveaxis(image, 0, -1).astype(jnp.float32) / 4.0


def maco_spectrum(latent: jax.Array, magnitude: jax.Array) -> jax.Array:
    """complex (C, H, W // 2 + 1): ``magnitude`` with the phase of the real latent image (H, W, C)'s ``rfft2``."""
    phase = jnp.angle(jnp.fft.rfft2(jnp.moveaxis(latent, -1, 0), axes=(-2, -1)))
    return magnitude * jnp.exp(1j * phase)


def maco_image(latent: jax.Array, magnitude: jax.Array, size: tuple[int, int]) -> jax.Array:
    """float32 (H, W, C): ``irfft2`` of ``maco_spectrum`` (its magnitude is ``magnitude``, exactly, up to float),
    standardized over the image (zero mean, unit standard deviation), as Xplique's MaCo does."""
    image = jnp.fft.irfft2(maco_spectrum(latent, magnitude), s=size, axes=(-2, -1))
    image = jnp.moveaxis(image, 0, -1).astype(jnp.float32)
    return (image - jnp.mean(image)) / (jnp.std(image) + 1e-5)


def mean_spectrum(images: np.ndarray) -> np.ndarray:
    """float32 (C, H, W // 2 + 1): the mean magnitude of the ``rfft2`` of each channel of ``images`` (uint8
    (N, H, W, C), as pixels in [0, 1]): MaCo's fixed magnitude, from the data the model saw."""
    check_uint8_images(images, "images")
    if not len(images):
        raise ArgumentError("images", "expected at least one image, got none")
    total = 0.0
    for start in range(0, len(images), 256):
        pixels = np.moveaxis(images[start:start + 256].astype(np.float64) / 255.0, -1, 1)  # (n, C, H, W)
        total = total + np.abs(np.fft.rfft2(pixels)).sum(axis=0)
    return (total / len(images)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def sample_spectrum(height: int, width: int) -> np.ndarray:
    """``mean_spectrum`` of the embedded CIFAR-10 sample at (height, width) (resized when that is not 32 x 32):
    the default magnitude of ``param="maco"``."""
    images = load_sample().images
    if (height, width) != images.shape[1:3]:
        images = resize_images(images, height, width)
    return mean_spectrum(images)


def param_shape(parameterization: str, size: tuple[int, int], channels: int) -> tuple[int, ...]:
    """The shape of one image's parameters: pixels and MaCo's latent (H, W, C), Fourier's spectrum."""
    h, w = size
    return (2, channels, h, w // 2 + 1) if parameterization == "fourier" else (h, w, channels)


def init_params(key: jax.Array, parameterization: str, size: tuple[int, int], channels: int) -> jax.Array:
    """One image's starting parameters: Gaussian noise of standard deviation ``INIT_SD``."""
    return INIT_SD * jax.random.normal(key, param_shape(parameterization, size, channels), jnp.float32)


def to_image(params: jax.Array, *, parameterization: str, size: tuple[int, int], colour: jax.Array | None,
             squash: bool, magnitude: jax.Array | None = None) -> jax.Array:
    """One image's parameters -> float32 (H, W, C): unbounded (``squash=False``), else in [0, 1] through a sigmoid;
    ``colour`` (C, C) or None: the colour matrix that decorrelates (``colour_matrix``); ``magnitude``
    (C, H, W // 2 + 1): MaCo's fixed spectrum magnitude (``param="maco"`` only)."""
    if parameterization == "pixel":
        t = params
    elif parameterization == "fourier":
        t = fourier_image(params, jnp.asarray(fourier_scale(*size)), size)
    else:
        t = maco_image(params, magnitude, size)
    if colour is not None:
        t = t @ colour.T
    return jax.nn.sigmoid(t) if squash else t


def colour_matrix(images: np.ndarray) -> np.ndarray:
    """float32 (3, 3): the square root of the RGB covariance of ``images`` (uint8 (N, H, W, 3), as pixels in [0, 1]),
    ``U sqrt(S)`` from its eigendecomposition, divided by its largest column norm (Lucid's normalization of its
    ImageNet matrix; here computed from the data the model saw)."""
    check_uint8_images(images, "images")
    if images.shape[-1] != 3:
        raise ArgumentError("images", f"expected RGB images (N, H, W, 3), got {images.shape[-1]} channels")
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    if len(pixels) < 2:
        raise ArgumentError("images", f"expected at least 2 pixels, got {len(pixels)}")
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    root = vectors * np.sqrt(np.maximum(values, 0.0))
    norm = np.linalg.norm(root, axis=0).max()
    if not norm > 0:
        raise ArgumentError("images", "expected images whose colours vary, got constant pixels")
    return (root / norm).astype(np.float32)


@functools.lru_cache(maxsize=1)
def sample_colour_matrix() -> np.ndarray:
    """``colour_matrix`` of the embedded CIFAR-10 sample (1000 test images): the default of ``decorrelate=True``."""
    return colour_matrix(load_sample().images)
