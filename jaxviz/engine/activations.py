"""Layer activations over a dataset: the notebook's feature extractor.

``Model(input, get_layer(name).output)`` becomes
``layer_features(network, images, layer=...)``: one jitted program per
(network, layer) that converts uint8 pixels to model input and stops at the
layer, run in fixed-size padded batches sharded over all devices. It is the
one inference path: classification uses it at the network's output layer.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jaxviz._batching import map_batches
from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.models.network import Network

__all__ = ["activation_maps", "layer_features"]


def _check_network(network) -> None:
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network (e.g. weights.network, jaxviz.from_linen(...)), "
                        f"got {type(network).__name__}")


def layer_features(network: Network, images: np.ndarray, *, layer: str | None = None, batch_size: int = 500,
                   progress: bool | str = False, devices: Any = None) -> np.ndarray:
    """Activations of ``layer`` for every image.

    Args:
      network: the model.
      images: uint8 (N, H, W, C) pixels of the network's input size.
      layer: a name from ``network.layer_names``; default the output layer.
      batch_size: images per compiled call (the last batch is padded).
      progress: show a progress bar (a string is its label).
      devices: the devices the batches are sharded over (default all; with ``jax.distributed``, pass this
        process's ``jax.local_devices()`` to compute without the others).

    Returns:
      float32 (N, *layer_shape), e.g. (N, 512) for the CNN's ``"fc1"``.

    Raises:
      TypeError: images are not uint8 (float model input would be converted twice).
      ValueError: unknown layer, images of another size, no images.
    """
    _check_network(network)
    layer = network.output_layer if layer is None else layer
    network.check_layer(layer)
    network.input_spec.check_images(images)
    if len(images) == 0:
        raise ArgumentError("images", "expected at least one image, got an empty array")
    program = network.uint8_fn(layer)
    return map_batches(functools.partial(program, network.variables), images, batch_size=batch_size,
                       progress=progress and (progress if isinstance(progress, str) else f"features {layer}"),
                       devices=None if devices is None else tuple(devices))


def activation_maps(network: Network, images: np.ndarray, *, layer: str) -> np.ndarray:
    """Feature maps of a layer with spatial output, for a few images: float32 (N, h, w, channels)."""
    _check_network(network)
    network.check_layer(layer)
    shape = network.output_shape(layer)
    if len(shape) != 3:
        spatial = [n for n in network.layer_names if len(network.output_shape(n)) == 3]
        raise ArgumentError("layer", f"expected a layer with (h, w, channels) maps for activation maps; {layer!r} has "
                         f"shape {shape}. Layers with maps: {', '.join(spatial) or 'none'}")
    return layer_features(network, images, layer=layer)
