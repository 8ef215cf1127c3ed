"""Weights files: save, load (with architecture and checksum checks), pretrained.

A weights file is one msgpack document::

    {"format": "jaxviz-weights", "version": 1,
     "architecture": {"widths": [...], "convs_per_block": 2, "hidden": 512, "num_classes": 10},
     "class_names": [...], "metadata": {...}, "variables": {"params": ..., "batch_stats": ...}}

``load_pretrained()`` reads the CIFAR-10 weights shipped in the package,
after checking their SHA-256 against ``assets/pretrained.json``; it needs no
network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from jaxviz._io import atomic_write_bytes, file_digest
from jaxviz.checks import ArgumentError, PathNotFoundError
from jaxviz.data.images import CIFAR10_CLASSES
from jaxviz.models.adapters import from_cnn
from jaxviz.models.cnn import CNN, init_variables
from jaxviz.models.network import Network

__all__ = ["PRETRAINED_FILE", "Weights", "load_pretrained", "load_weights", "pretrained_sha256", "save_weights"]

FORMAT = "jaxviz-weights"
VERSION = 1
PRETRAINED_FILE = "cifar10_cnn.msgpack"
MANIFEST_FILE = "pretrained.json"


@dataclasses.dataclass(frozen=True, eq=False)
class Weights:
    """A weights file's content: the built-in ``CNN``, its variables, class names and metadata.

    Attributes:
      model: the ``CNN`` architecture.
      variables: ``{"params", "batch_stats"}`` as numpy arrays.
      class_names: one name per output class.
      metadata: what the file records (training recipe, measured accuracy...).
      network: the same as a ``jaxviz.Network``, which every analysis takes.
    """

    model: CNN
    variables: dict
    class_names: tuple[str, ...]
    metadata: dict
    network: Network = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "network", from_cnn(self.model, self.variables, self.class_names))


def _architecture(model: CNN) -> dict:
    return {"widths": list(model.widths), "convs_per_block": model.convs_per_block,
            "hidden": model.hidden, "num_classes": model.num_classes, "dropout": model.dropout}


def _shapes_of(arch: dict) -> dict:
    """The part of an architecture that decides the variables' shapes (dropout does not)."""
    return {k: v for k, v in arch.items() if k != "dropout"}


def save_weights(path: str | os.PathLike, model: CNN, variables: dict, *,
                 class_names: tuple[str, ...] = CIFAR10_CLASSES, metadata: dict | None = None) -> str:
    """Write ``variables`` of ``model`` to ``path`` atomically; return its SHA-256.

    When ``path`` is the package's pretrained file, the manifest holding its
    checksum is rewritten too.
    """
    if len(class_names) != model.num_classes:
        raise ArgumentError("class_names", f"expected {model.num_classes} names, got {len(class_names)}")
    payload = {
        "format": FORMAT, "version": VERSION, "architecture": _architecture(model),
        "class_names": list(class_names), "metadata": json.dumps(metadata or {}),
        "variables": flax.serialization.to_state_dict(jax.tree_util.tree_map(np.asarray, variables)),
    }
    path = Path(path)
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(payload))
    digest = file_digest(path)
    if path.resolve() == _pretrained_path().resolve():
        manifest = {"file": PRETRAINED_FILE, "sha256": digest, "metadata": metadata or {}}
        atomic_write_bytes(path.parent / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return digest


def _check_shapes(expected: Any, got: Any, path: str) -> None:
    """Raise ``ValueError`` naming the first leaf whose presence or shape differs."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            raise ArgumentError("weights", f"expected a group at {path or '/'}, got an array")
        for key in sorted(set(expected) | set(got)):
            where = f"{path}/{key}"
            if key not in got:
                raise ArgumentError("weights", f"missing {where} (expected shape {_shape(expected[key])})")
            if key not in expected:
                raise ArgumentError("weights", f"unexpected entry {where}: the file is for another architecture")
            _check_shapes(expected[key], got[key], where)
        return
    if isinstance(got, dict) or np.shape(got) != np.shape(expected):
        raise ArgumentError("weights", f"{path} has shape {_shape(got)}, the architecture expects {_shape(expected)}")


def _shape(x: Any) -> str:
    return "a group" if isinstance(x, dict) else str(tuple(np.shape(x)))


def load_weights(path: str | os.PathLike, *, sha256: str | None = None, model: CNN | None = None) -> Weights:
    """Read a weights file written by ``save_weights``.

    Args:
      path: the file.
      sha256: if given, the file's SHA-256 must equal it.
      model: if given, the file must hold this architecture's variables.

    Returns:
      ``Weights(model, variables, class_names, metadata)``; variables are numpy arrays.

    Raises:
      FileNotFoundError: no such file.
      ValueError: checksum mismatch, not a jaxviz weights file (corrupt or
        truncated), or variables that do not fit the architecture; the
        message names the file and what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"path: no weights file at {str(path)!r}")
    if sha256 is not None:
        actual = file_digest(path)
        if actual != sha256:
            raise ArgumentError("path", f"{str(path)!r} has SHA-256 {actual}, expected {sha256} "
                             "(the file is corrupt or was replaced)")
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types on corrupt input
        raise ArgumentError("path", f"{str(path)!r} is not a jaxviz weights file (msgpack error: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArgumentError("path", f"{str(path)!r} is not a jaxviz weights file (expected format {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ArgumentError("path", f"{str(path)!r} has format version {payload.get('version')}, expected {VERSION}")
    try:
        arch = payload["architecture"]
        file_model = CNN(widths=tuple(arch["widths"]), convs_per_block=int(arch["convs_per_block"]),
                         hidden=int(arch["hidden"]), num_classes=int(arch["num_classes"]),
                         dropout=float(arch.get("dropout", 0.0)))
        class_names = tuple(payload["class_names"])
        metadata = json.loads(payload["metadata"])
        stored = payload["variables"]
    except (KeyError, TypeError, ValueError) as e:
        raise ArgumentError("path", f"{str(path)!r} is a damaged jaxviz weights file ({type(e).__name__}: {e})") from None
    if model is not None and _shapes_of(_architecture(model)) != _shapes_of(_architecture(file_model)):
        raise ArgumentError("path", f"{str(path)!r} holds weights for architecture {_architecture(file_model)}, "
                         f"expected {_architecture(model)}")
    expected = jax.eval_shape(lambda: init_variables(file_model, jax.random.key(0)))
    expected = flax.serialization.to_state_dict(expected)
    _check_shapes(expected, stored, "")
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), stored)
    return Weights(file_model, variables, class_names, metadata)


def _pretrained_path() -> Path:
    return Path(str(resources.files("jaxviz") / "assets" / PRETRAINED_FILE))


def pretrained_sha256() -> str:
    """The SHA-256 recorded in the package manifest for the shipped weights."""
    manifest = Path(str(resources.files("jaxviz") / "assets" / MANIFEST_FILE))
    return json.loads(manifest.read_text())["sha256"]


def load_pretrained() -> Weights:
    """The CIFAR-10 CNN shipped inside the package (offline, checksum verified).

    Returns:
      ``Weights(model, variables, class_names, metadata)``; ``metadata``
      records the training recipe and the measured test accuracy.
    """
    return load_weights(_pretrained_path(), sha256=pretrained_sha256())
