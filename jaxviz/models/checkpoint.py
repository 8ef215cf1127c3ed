"""Training checkpoints: what run a checkpoint belongs to, and checks of output paths before any work.

A checkpoint records its run's identity (config, architecture, a SHA-256
fingerprint of the training and test data) and is resumed only into that
same run; anything else is refused with the differences named.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from jaxviz._io import atomic_write_bytes
from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.data.images import Dataset

__all__ = ["CHECKPOINT_FILE", "check_output_file", "load_checkpoint", "prepare_checkpoint_dir", "run_identity",
           "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.msgpack"
CHECKPOINT_FORMAT = 2  # 1: no record of the run's data and settings (refused)

# The way out of a refused checkpoint, for the Python API and the command line alike.
START_OVER_HINT = ("To start over and overwrite it, pass --fresh (Python API: train(..., resume=False)), "
                   "or use another checkpoint directory (--checkpoint-dir / checkpoint_dir=...).")

# --------------------------------------------------------------------------- output checks (before any work)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _probe_writable(directory: Path, name: str) -> None:
    """Create and remove a temporary file in ``directory``: the only reliable writability test."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".jaxviz-write-test.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ArgumentError(f"{name}", f"cannot write to directory {str(directory)!r} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def prepare_checkpoint_dir(checkpoint_dir: str | os.PathLike, name: str = "checkpoint_dir") -> Path:
    """Create ``checkpoint_dir`` if needed and check that a checkpoint can be written there.

    Raises:
      TypeError: not a path.
      ValueError: the path is a file (or lies under one), or the directory
        cannot be created or written to; the message starts with ``name``.
    """
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name}", f"expected a directory path, got {type(checkpoint_dir).__name__}")
    directory = Path(checkpoint_dir)
    existing = _nearest_existing(directory)
    if existing.exists() and not existing.is_dir():
        if existing == directory:
            raise ArgumentError(f"{name}", f"expected a directory for checkpoints, got {str(directory)!r}, "
                             f"which is a file, not a directory")
        raise ArgumentError(f"{name}", f"cannot create directory {str(directory)!r}: {str(existing)!r} "
                         f"is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(f"{name}", f"cannot create directory {str(directory)!r} ({e.strerror or e})") from None
    ckpt = directory / CHECKPOINT_FILE
    if ckpt.exists() and not ckpt.is_file():
        raise ArgumentError(f"{name}", f"{str(ckpt)!r} is a directory, expected a checkpoint file (or nothing)")
    _probe_writable(directory, name)
    return directory


def check_output_file(path: str | os.PathLike, name: str = "out") -> Path:
    """Check, before any work, that a file can be written atomically at ``path``.

    ``path`` must not be a directory, and its nearest existing parent must be
    a writable directory (missing parents are created when the file is written).

    Raises:
      TypeError: not a path.
      ValueError: the message starts with ``name`` and says what is wrong.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name}", f"expected a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"{name}", f"expected a file path, got {str(path)!r}, which is a directory")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise ArgumentError(f"{name}", f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a directory")
    _probe_writable(parent, name)
    return path


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(dataset: Dataset) -> dict:
    """What identifies a dataset: a SHA-256 of its images, labels and class names (not its ``source``)."""
    images = np.ascontiguousarray(dataset.images)
    labels = np.ascontiguousarray(dataset.labels, dtype="<i8")
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(images.shape), "dtype": str(images.dtype),
                         "class_names": list(dataset.class_names)}, sort_keys=True).encode())
    h.update(memoryview(images).cast("B"))
    h.update(memoryview(labels).cast("B"))
    return {"sha256": h.hexdigest(), "images": len(dataset), "class_names": list(dataset.class_names)}


def run_identity(config: dict, model: Any, train_set: Dataset, test_set: Dataset | None) -> dict:
    """The record a checkpoint carries of the run it belongs to (JSON-compatible).

    Args:
      config: the training settings as a dict.
      model: the ``CNN`` being trained.
      train_set, test_set: the data (fingerprinted by content, not by path).
    """
    identity = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "model": {"widths": list(model.widths), "convs_per_block": model.convs_per_block, "hidden": model.hidden,
                  "num_classes": model.num_classes, "dropout": model.dropout},
        "train_data": _fingerprint(train_set),
        "test_data": None if test_set is None else _fingerprint(test_set),
    }
    return json.loads(json.dumps(identity, sort_keys=True))  # tuples -> lists, as stored


def _field_differences(saved: Any, now: dict) -> str:
    saved = saved if isinstance(saved, dict) else {}
    return ", ".join(f"{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                     for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))


def _data_difference(saved: Any, now: dict | None) -> str:
    if saved is None or now is None:
        describe = lambda d: "none" if d is None else f"{d.get('images')} images"  # noqa: E731
        return f"{describe(saved)} in the checkpoint, {describe(now)} now"
    if not isinstance(saved, dict):
        return "unreadable record in the checkpoint"
    if saved.get("class_names") != now["class_names"]:
        return f"class names {saved.get('class_names')} in the checkpoint, {now['class_names']} now"
    if saved.get("images") != now["images"]:
        return f"{saved.get('images')} images in the checkpoint, {now['images']} now"
    return (f"same classes and number of images, other content: sha256 {str(saved.get('sha256'))[:12]}... "
            f"in the checkpoint, {now['sha256'][:12]}... now")


def _differences(saved: dict, now: dict) -> list[str]:
    """What differs between the run recorded in a checkpoint and this one, in words."""
    out = []
    if saved.get("config") != now["config"]:
        out.append(f"different config ({_field_differences(saved.get('config'), now['config'])})")
    for key, label in (("train_data", "training data"), ("test_data", "test data")):
        if saved.get(key) != now[key]:
            out.append(f"different {label} ({_data_difference(saved.get(key), now[key])})")
    if saved.get("model") != now["model"]:
        out.append(f"different model ({_field_differences(saved.get('model'), now['model'])})")
    return out


def save_checkpoint(path: Path, state: Any, epoch: int, identity: dict, history: list) -> None:
    payload = {"state": flax.serialization.to_state_dict(state), "epoch": epoch,
               "config": json.dumps(identity["config"], sort_keys=True, allow_nan=False),
               "identity": json.dumps(identity, sort_keys=True, allow_nan=False),
               "history": json.dumps(history, allow_nan=False)}
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(payload))


def _same_shapes(a: Any, b: Any) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(np.shape(x) == np.shape(y) for x, y in zip(leaves_a, leaves_b, strict=True))


def load_checkpoint(path: Path, template: Any, identity: dict):
    """The state, finished epochs and history of the checkpoint at ``path``, if it belongs to ``identity``.

    Raises:
      ValueError: unreadable, written without a record of its run (older
        jaxviz), or written by another run (data, config or model); the
        message names the checkpoint directory, what differs and the way out.
    """
    where = f"checkpoint_dir: {str(path.parent)!r}"

    def unreadable(reason: Any) -> ValueError:
        return ValueError(f"{where} holds {path.name}, which is not a readable checkpoint ({reason}). "
                          f"{START_OVER_HINT}")

    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types on corrupt input
        raise unreadable(e) from None
    if not isinstance(payload, dict):
        raise unreadable("not a msgpack map")
    if "identity" not in payload:
        raise ValueError(f"{where} holds a checkpoint without a record of the data and settings it was trained "
                         f"with (written by an older jaxviz), so it cannot be resumed safely. {START_OVER_HINT}")
    try:
        saved = json.loads(payload["identity"])
        if not isinstance(saved, dict):
            raise ValueError("the run record is not a JSON object")
    except (TypeError, ValueError) as e:
        raise unreadable(e) from None
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where} holds a checkpoint of format {saved.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT}. {START_OVER_HINT}")
    differences = _differences(saved, identity)
    if differences:
        raise ValueError(f"{where} holds another run, not this one: {'; '.join(differences)}. {START_OVER_HINT}")
    try:
        state = flax.serialization.from_state_dict(template, payload["state"])
        if not _same_shapes(state, template):
            raise ValueError("its arrays do not have the model's shapes")
        epoch = int(payload["epoch"])
        history = json.loads(payload["history"])
        if not (0 <= epoch <= identity["config"]["epochs"] and isinstance(history, list) and len(history) == epoch):
            raise ValueError(f"epoch {epoch} does not match its history of {len(history)} epochs")
    except Exception as e:
        raise unreadable(e) from None
    return state, epoch, history
