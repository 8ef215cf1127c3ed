"""Training: optax SGD with a one-cycle schedule, JAX augmentation, resumable.

``train(config, train_set, test_set, checkpoint_dir=...)`` writes a
checkpoint atomically at the end of every epoch and, when started again with
the same directory and config, continues from the last finished epoch. The
shuffling, augmentation and dropout of epoch ``e`` depend only on
``(seed, e)``, so a run killed mid-epoch and resumed ends with exactly the
variables an uninterrupted run would have had (on the same machine).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz._io import atomic_write_bytes
from jaxviz._progress import progress_bar
from jaxviz.batching import map_batches
from jaxviz.data import Dataset
from jaxviz.model import CNN, init_variables, uint8_program

__all__ = ["TrainConfig", "TrainResult", "augment", "predict", "train"]

CHECKPOINT_FILE = "checkpoint.msgpack"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded with the weights)."""

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

    def model(self, num_classes: int) -> CNN:
        return CNN(widths=tuple(self.widths), convs_per_block=self.convs_per_block,
                   hidden=self.hidden, num_classes=num_classes, dropout=self.dropout)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


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
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=config.peak_lr / 10, peak_value=config.peak_lr,
        warmup_steps=max(1, int(config.warmup_fraction * total)), decay_steps=total, end_value=0.0)

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
    """Logits for uint8 images (N, 32, 32, 3) -> float32 (N, num_classes)."""
    return map_batches(functools.partial(uint8_program(model, None), variables), images, batch_size=batch_size,
                       progress=progress)


def _save_checkpoint(path: Path, state: TrainState, epoch: int, config: TrainConfig, history: list) -> None:
    payload = {"state": flax.serialization.to_state_dict(state), "epoch": epoch,
               "config": config.to_json(), "history": json.dumps(history)}
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(payload))


def _load_checkpoint(path: Path, template: TrainState, config: TrainConfig):
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
        state = flax.serialization.from_state_dict(template, payload["state"])
    except Exception as e:  # msgpack raises several types on corrupt input
        raise ValueError(f"checkpoint_dir: {str(path)!r} is not a readable checkpoint ({e})") from None
    if payload["config"] != config.to_json():
        raise ValueError(
            f"checkpoint_dir: {str(path)!r} was written by a different config; "
            f"expected {config.to_json()}, got {payload['config']} (use another directory or resume=False)")
    return state, int(payload["epoch"]), json.loads(payload["history"])


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
      test_set: optional; its accuracy is recorded per epoch.
      checkpoint_dir: where ``checkpoint.msgpack`` is written after every epoch.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
      progress: show a progress bar with the running loss and accuracy.
      on_step: called as ``on_step(epoch, step)`` after each step (for tests).

    Returns:
      ``TrainResult`` with the model, its variables and the per-epoch history.
    """
    if len(train_set) < config.batch_size:
        raise ValueError(f"train_set: expected at least batch_size={config.batch_size} images, got {len(train_set)}")
    model = config.model(len(train_set.class_names))
    steps_per_epoch = len(train_set) // config.batch_size
    tx = _optimizer(config, steps_per_epoch)
    key = jax.random.key(config.seed)
    variables = init_variables(model, jax.random.fold_in(key, 2**31 - 1))
    state = TrainState(variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    start_epoch, history = 0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt is not None and resume and ckpt.exists():
        state, start_epoch, history = _load_checkpoint(ckpt, state, config)

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
                loss_sum += float(loss) * len(idx)
                correct += int(n_correct)
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if on_step is not None:
                    on_step(epoch, step)
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "seconds": time.perf_counter() - t0}
        if test_set is not None:
            logits = predict(model, {"params": state.params, "batch_stats": state.batch_stats}, test_set.images)
            record["test_accuracy"] = float(np.mean(np.argmax(logits, -1) == test_set.labels))
        history.append(record)
        if progress:
            print(json.dumps(record), file=sys.stderr, flush=True)
        if ckpt is not None:
            _save_checkpoint(ckpt, state, epoch + 1, config, history)
    return TrainResult(model, {"params": state.params, "batch_stats": state.batch_stats}, history)
