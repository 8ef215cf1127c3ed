"""Training: optax SGD with a one-cycle schedule, JAX augmentation, resumable.

``train(config, train_set, test_set, checkpoint_dir=...)`` writes a
checkpoint atomically at the end of every epoch and, when started again with
the same directory, config and data, continues from the last finished epoch.
A checkpoint records what it belongs to (the config, the model architecture
and a SHA-256 fingerprint of the training and test data); a checkpoint of any
other run is refused, never silently resumed (``resume=False`` starts over
and overwrites it). The shuffling, augmentation and dropout of epoch ``e``
depend only on ``(seed, e)``, so a run killed mid-epoch and resumed ends with
exactly the variables an uninterrupted run would have had (on the same
machine). A run whose loss or variables become NaN or infinite stops with
``TrainingDiverged`` and leaves the last good checkpoint as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz._io import atomic_write_bytes
from jaxviz._progress import progress_bar
from jaxviz.batching import map_batches
from jaxviz.data import Dataset, check_uint8_images
from jaxviz.model import CNN, IMAGE_SHAPE, check_images_fit, init_variables, uint8_program

__all__ = [
    "TrainConfig", "TrainResult", "TrainingDiverged", "augment", "check_output_file", "predict",
    "prepare_checkpoint_dir", "train",
]

CHECKPOINT_FILE = "checkpoint.msgpack"
CHECKPOINT_FORMAT = 2  # 1: no record of the run's data and settings (refused)
MAX_BLOCKS = int(math.log2(min(IMAGE_SHAPE[:2])))  # each block halves the 32x32 input

# The way out of a refused checkpoint, for the Python API and the command line alike.
START_OVER_HINT = ("To start over and overwrite it, pass --fresh (Python API: train(..., resume=False)), "
                   "or use another checkpoint directory (--checkpoint-dir / checkpoint_dir=...).")


class TrainingDiverged(ValueError):
    """The loss or the variables became NaN or infinite; no checkpoint was written for that epoch."""


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = True) -> float:
    if high == math.inf:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    x = float(value)
    ok = (math.isfinite(x) and (x > low if low_open else x >= low)
          and (x < high if high_open else x <= high))
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {x!r}")
    return x


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded with the weights).

    Every field is checked when the config is made (``ValueError`` or
    ``TypeError`` naming the field), so a bad value fails before any work.
    """

    epochs: int = 20
    batch_size: int = 128
    peak_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.15
    seed: int = 0
    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 2
    hidden: int = 512
    dropout: float = 0.3

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; normalise ints, floats and ``widths`` (to a tuple of ints)."""
        checked = {
            "epochs": _check_int("epochs", self.epochs, 1),
            "batch_size": _check_int("batch_size", self.batch_size, 1),
            "peak_lr": _check_float("peak_lr", self.peak_lr, 0.0, math.inf, low_open=True),
            "momentum": _check_float("momentum", self.momentum, 0.0, 1.0),
            "weight_decay": _check_float("weight_decay", self.weight_decay, 0.0, math.inf),
            "label_smoothing": _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0),
            "warmup_fraction": _check_float("warmup_fraction", self.warmup_fraction, 0.0, 1.0),
            "seed": _check_int("seed", self.seed, -(2**63), 2**63 - 1),
            "widths": self._checked_widths(),
            "convs_per_block": _check_int("convs_per_block", self.convs_per_block, 1),
            "hidden": _check_int("hidden", self.hidden, 1),
            "dropout": _check_float("dropout", self.dropout, 0.0, 1.0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def _checked_widths(self) -> tuple[int, ...]:
        expected = f"1 to {MAX_BLOCKS} positive ints (one per conv block of the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} input)"
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise TypeError(f"widths: expected {expected}, got {self.widths!r} ({type(self.widths).__name__})")
        widths = tuple(self.widths)
        if not 1 <= len(widths) <= MAX_BLOCKS:
            raise ValueError(f"widths: expected {expected}, got {len(widths)} values {list(widths)}")
        return tuple(_check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths))

    def model(self, num_classes: int) -> CNN:
        return CNN(widths=tuple(self.widths), convs_per_block=self.convs_per_block,
                   hidden=self.hidden, num_classes=num_classes, dropout=self.dropout)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)


class TrainState(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass
class TrainResult:
    model: CNN
    variables: dict
    history: list[dict]  # one dict per epoch: loss, train_accuracy, test_accuracy, seconds


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Random crop (4-pixel reflect padding) and horizontal flip, per image.

    Args:
      key: PRNG key.
      images: float (N, H, W, C).

    Returns:
      float (N, H, W, C), each image independently shifted by -4..4 pixels in
      each direction and flipped left-right with probability 1/2.
    """

    def one(key, image):
        k_crop, k_flip = jax.random.split(key)
        h, w, c = image.shape
        padded = jnp.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(k_crop, (2,), 0, 9)
        crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
        return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)

    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


def _optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    total = config.epochs * steps_per_epoch
    # At least one warm-up step, and at least one step of cosine decay after it (a single-step run
    # has no warm-up: optax refuses a decay of zero steps).
    warmup = min(max(1, int(config.warmup_fraction * total)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=config.peak_lr / 10, peak_value=config.peak_lr,
        warmup_steps=warmup, decay_steps=total, end_value=0.0)

    def decay_mask(params):  # decay conv and dense kernels, not biases or batch-norm scales
        return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)

    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=True),
    )


def _make_train_step(model: CNN, tx: optax.GradientTransformation, config: TrainConfig):
    @jax.jit
    def step(state: TrainState, images_u8, labels, key):
        k_aug, k_drop = jax.random.split(key)
        x = augment(k_aug, images_u8.astype(jnp.float32) / 255.0)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": k_drop})
            targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), config.label_smoothing)
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(optax.apply_updates(state.params, deltas), updates["batch_stats"], opt_state)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return new_state, loss, correct

    return step


def predict(model: CNN, variables: dict, images: np.ndarray, *, batch_size: int = 500,
            progress: bool | str = False) -> np.ndarray:
    """Logits for uint8 images (N, 32, 32, 3) -> float32 (N, num_classes).

    Raises:
      TypeError: ``images`` are not uint8 (float model input would be divided
        by 255 a second time).
      ValueError: ``images`` do not have the model's input size.
    """
    check_uint8_images(images, "images")
    check_images_fit(model, images)
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got an empty array")
    return map_batches(functools.partial(uint8_program(model, None), variables), images, batch_size=batch_size,
                       progress=progress)


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
        raise ValueError(f"{name}: cannot write to directory {str(directory)!r} ({e.strerror or e})") from None
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
        raise TypeError(f"{name}: expected a directory path, got {type(checkpoint_dir).__name__}")
    directory = Path(checkpoint_dir)
    existing = _nearest_existing(directory)
    if existing.exists() and not existing.is_dir():
        if existing == directory:
            raise ValueError(f"{name}: expected a directory for checkpoints, got {str(directory)!r}, "
                             f"which is a file, not a directory")
        raise ValueError(f"{name}: cannot create directory {str(directory)!r}: {str(existing)!r} "
                         f"is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{name}: cannot create directory {str(directory)!r} ({e.strerror or e})") from None
    ckpt = directory / CHECKPOINT_FILE
    if ckpt.exists() and not ckpt.is_file():
        raise ValueError(f"{name}: {str(ckpt)!r} is a directory, expected a checkpoint file (or nothing)")
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
        raise TypeError(f"{name}: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}: expected a file path, got {str(path)!r}, which is a directory")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise ValueError(f"{name}: cannot write {str(path)!r}: {str(parent)!r} is a file, not a directory")
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


def _run_identity(config: TrainConfig, train_set: Dataset, test_set: Dataset | None) -> dict:
    """The record a checkpoint carries of the run it belongs to (JSON-compatible)."""
    model = config.model(len(train_set.class_names))
    identity = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(config),
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


def _save_checkpoint(path: Path, state: TrainState, epoch: int, identity: dict, history: list) -> None:
    payload = {"state": flax.serialization.to_state_dict(state), "epoch": epoch,
               "config": json.dumps(identity["config"], sort_keys=True, allow_nan=False),
               "identity": json.dumps(identity, sort_keys=True, allow_nan=False),
               "history": json.dumps(history, allow_nan=False)}
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(payload))


def _same_shapes(a: Any, b: Any) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(np.shape(x) == np.shape(y) for x, y in zip(leaves_a, leaves_b, strict=True))


def _load_checkpoint(path: Path, template: TrainState, identity: dict):
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


@jax.jit
def _all_finite(tree) -> jax.Array:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


# --------------------------------------------------------------------------- training


def _check_dataset(name: str, dataset: Any, *, minimum: int, what: str, hint: str = "") -> None:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name}: expected a jaxviz Dataset, got {type(dataset).__name__}")
    if dataset.images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name}: expected images of shape (N, {', '.join(map(str, IMAGE_SHAPE))}), "
                         f"got {dataset.images.shape}")
    if len(dataset) < minimum:
        hint = " (the dataset is empty)" if len(dataset) == 0 else hint
        raise ValueError(f"{name}: expected at least {what}, got {len(dataset)}{hint}")


def train(
    config: TrainConfig,
    train_set: Dataset,
    test_set: Dataset | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a ``CNN`` on ``train_set``; evaluate on ``test_set`` after each epoch.

    Args:
      config: the run's hyper-parameters and seed.
      train_set: uint8 images (N, 32, 32, 3); the last incomplete batch of
        each epoch is dropped so every step has the same shape.
      test_set: optional, with the same class names; its accuracy is recorded per epoch.
      checkpoint_dir: where ``checkpoint.msgpack`` is written after every
        epoch (created if missing, checked for writability before any work).
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is
        one. It must belong to this run (same config, model, training and
        test data), otherwise ``ValueError``. ``resume=False`` ignores any
        checkpoint there and overwrites it after the first epoch.
      progress: show a progress bar with the running loss and accuracy, and
        print each epoch's record as a JSON line on stderr.
      on_step: called as ``on_step(epoch, step)`` after each step (for tests).

    Returns:
      ``TrainResult`` with the model, its variables and the per-epoch history.

    Raises:
      TypeError, ValueError: bad arguments, an unusable checkpoint directory,
        or a checkpoint of another run (before any training).
      TrainingDiverged: the loss or the variables became NaN or infinite
        (e.g. a learning rate far too high); the last good checkpoint is kept.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    config.validate()
    _check_dataset("train_set", train_set, minimum=config.batch_size,
                   what=f"batch_size={config.batch_size} images", hint="; lower the batch size")
    if test_set is not None:
        _check_dataset("test_set", test_set, minimum=1, what="1 image")
        if test_set.class_names != train_set.class_names:
            raise ValueError(f"test_set: expected the training classes {list(train_set.class_names)}, "
                             f"got {list(test_set.class_names)}")
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = prepare_checkpoint_dir(checkpoint_dir) / CHECKPOINT_FILE
        identity = _run_identity(config, train_set, test_set)

    model = config.model(len(train_set.class_names))
    steps_per_epoch = len(train_set) // config.batch_size
    tx = _optimizer(config, steps_per_epoch)
    key = jax.random.key(config.seed)
    variables = init_variables(model, jax.random.fold_in(key, 2**31 - 1))
    state = TrainState(variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    start_epoch, history = 0, []
    if ckpt is not None and resume and ckpt.exists():
        state, start_epoch, history = _load_checkpoint(ckpt, state, identity)
    saved_epoch = start_epoch if start_epoch > 0 else None  # the last checkpoint of this run

    def diverged(what: str, epoch: int) -> TrainingDiverged:
        if ckpt is None:
            kept = "no checkpoint was being written"
        elif saved_epoch is None:
            kept = f"no checkpoint of this run was written to {str(ckpt.parent)!r}"
        else:
            kept = f"the checkpoint of epoch {saved_epoch} in {str(ckpt.parent)!r} was kept as it was"
        return TrainingDiverged(
            f"training diverged: {what} in epoch {epoch + 1} with peak_lr={config.peak_lr:g}; "
            f"try a lower learning rate (--lr / peak_lr); {kept}")

    step_fn = _make_train_step(model, tx, config)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        epoch_key = jax.random.fold_in(key, epoch)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(epoch_key, 0), len(train_set)))
        loss_sum, correct, seen = 0.0, 0, 0
        with progress_bar(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                          disable=not progress, unit="step") as bar:
            for step in range(steps_per_epoch):
                idx = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
                state, loss, n_correct = step_fn(state, train_set.images[idx], train_set.labels[idx],
                                                 jax.random.fold_in(epoch_key, step + 1))
                loss = float(loss)
                if not math.isfinite(loss):
                    raise diverged(f"the loss became {loss} at step {step + 1}", epoch)
                loss_sum += loss * len(idx)
                correct += int(n_correct)
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if on_step is not None:
                    on_step(epoch, step)
        if not math.isfinite(loss_sum) or not bool(_all_finite(state)):
            raise diverged("the variables became NaN or infinite", epoch)
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "seconds": time.perf_counter() - t0}
        if test_set is not None:
            logits = predict(model, {"params": state.params, "batch_stats": state.batch_stats}, test_set.images)
            record["test_accuracy"] = float(np.mean(np.argmax(logits, -1) == test_set.labels))
        history.append(record)
        if progress:
            print(json.dumps(record, allow_nan=False), file=sys.stderr, flush=True)
        if ckpt is not None:
            _save_checkpoint(ckpt, state, epoch + 1, identity, history)
            saved_epoch = epoch + 1
    return TrainResult(model, {"params": state.params, "batch_stats": state.batch_stats}, history)
