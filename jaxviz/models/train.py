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
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz._batching import map_batches
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_real
from jaxviz.data.images import Dataset
from jaxviz.models.adapters import from_cnn
from jaxviz.models.checkpoint import (
    CHECKPOINT_FILE,
    check_output_file,
    load_checkpoint,
    prepare_checkpoint_dir,
    run_identity,
    save_checkpoint,
)
from jaxviz.models.cnn import CNN, IMAGE_SHAPE, init_variables

__all__ = [
    "TrainConfig", "TrainResult", "TrainingDiverged", "augment", "check_output_file",
    "prepare_checkpoint_dir", "train",
]

MAX_BLOCKS = int(math.log2(min(IMAGE_SHAPE[:2])))  # each block halves the 32x32 input


class TrainingDiverged(ValueError):
    """The loss or the variables became NaN or infinite; no checkpoint was written for that epoch."""


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name}", f"expected {expected}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ArgumentError(f"{name}", f"expected {expected}, got {value}")
    return int(value)


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
            "peak_lr": check_real(self.peak_lr, "peak_lr", 0.0, math.inf, low_open=True),
            "momentum": check_real(self.momentum, "momentum", 0.0, 1.0),
            "weight_decay": check_real(self.weight_decay, "weight_decay", 0.0, math.inf),
            "label_smoothing": check_real(self.label_smoothing, "label_smoothing", 0.0, 1.0),
            "warmup_fraction": check_real(self.warmup_fraction, "warmup_fraction", 0.0, 1.0),
            "seed": _check_int("seed", self.seed, -(2**63), 2**63 - 1),
            "widths": self._checked_widths(),
            "convs_per_block": _check_int("convs_per_block", self.convs_per_block, 1),
            "hidden": _check_int("hidden", self.hidden, 1),
            "dropout": check_real(self.dropout, "dropout", 0.0, 1.0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def _checked_widths(self) -> tuple[int, ...]:
        expected = f"1 to {MAX_BLOCKS} positive ints (one per conv block of the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} input)"
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise ArgumentTypeError("widths", f"expected {expected}, got {self.widths!r} ({type(self.widths).__name__})")
        widths = tuple(self.widths)
        if not 1 <= len(widths) <= MAX_BLOCKS:
            raise ArgumentError("widths", f"expected {expected}, got {len(widths)} values {list(widths)}")
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


def _make_train_step(model: CNN, tx: optax.GradientTransformation, config: TrainConfig, to_input: Callable):
    @jax.jit
    def step(state: TrainState, images_u8, labels, key):
        k_aug, k_drop = jax.random.split(key)
        x = augment(k_aug, to_input(images_u8))

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


@jax.jit
def _all_finite(tree) -> jax.Array:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


# --------------------------------------------------------------------------- training


def _check_dataset(name: str, dataset: Any, *, minimum: int, what: str, hint: str = "") -> None:
    if not isinstance(dataset, Dataset):
        raise ArgumentTypeError(f"{name}", f"expected a jaxviz Dataset, got {type(dataset).__name__}")
    if dataset.images.shape[1:] != IMAGE_SHAPE:
        raise ArgumentError(f"{name}", f"expected images of shape (N, {', '.join(map(str, IMAGE_SHAPE))}), "
                         f"got {dataset.images.shape}")
    if len(dataset) < minimum:
        hint = " (the dataset is empty)" if len(dataset) == 0 else hint
        raise ArgumentError(f"{name}", f"expected at least {what}, got {len(dataset)}{hint}")


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
        raise ArgumentTypeError("config", f"expected a TrainConfig, got {type(config).__name__}")
    config.validate()
    _check_dataset("train_set", train_set, minimum=config.batch_size,
                   what=f"batch_size={config.batch_size} images", hint="; lower the batch size")
    if test_set is not None:
        _check_dataset("test_set", test_set, minimum=1, what="1 image")
        if test_set.class_names != train_set.class_names:
            raise ArgumentError("test_set", f"expected the training classes {list(train_set.class_names)}, "
                             f"got {list(test_set.class_names)}")
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = prepare_checkpoint_dir(checkpoint_dir) / CHECKPOINT_FILE

    model = config.model(len(train_set.class_names))
    if ckpt is not None:
        identity = run_identity(dataclasses.asdict(config), model, train_set, test_set)
    steps_per_epoch = len(train_set) // config.batch_size
    tx = _optimizer(config, steps_per_epoch)
    key = jax.random.key(config.seed)
    variables = init_variables(model, jax.random.fold_in(key, 2**31 - 1))
    state = TrainState(variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    network = from_cnn(model, variables)  # its programs take the variables as an argument
    evaluate = network.uint8_fn(network.output_layer)
    start_epoch, history = 0, []
    if ckpt is not None and resume and ckpt.exists():
        state, start_epoch, history = load_checkpoint(ckpt, state, identity)
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

    step_fn = _make_train_step(model, tx, config, network.to_input)
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
            logits = map_batches(functools.partial(evaluate, {"params": state.params, "batch_stats": state.batch_stats}),
                                 test_set.images, batch_size=500)
            record["test_accuracy"] = float(np.mean(np.argmax(logits, -1) == test_set.labels))
        history.append(record)
        if progress:
            print(json.dumps(record, allow_nan=False), file=sys.stderr, flush=True)
        if ckpt is not None:
            save_checkpoint(ckpt, state, epoch + 1, identity, history)
            saved_epoch = epoch + 1
    return TrainResult(model, {"params": state.params, "batch_stats": state.batch_stats}, history)
