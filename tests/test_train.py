"""Tests for jaxviz.train: augmentation, learning, checkpoints, determinism, resume after crashes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.train import (
    CHECKPOINT_FILE, TrainConfig, TrainState, _load_checkpoint, _optimizer, _save_checkpoint, augment, predict,
    train,
)
from jaxviz.model import init_variables

from conftest import make_easy_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

# 64 images / batch 16 = 4 steps per epoch, 20 steps in all (compiling dominates the time).
CONFIG = TrainConfig(epochs=5, batch_size=16, widths=(4, 8), hidden=16, seed=0)
CRASH_EPOCH, CRASH_STEP = 1, 2  # 0-based: the middle of epoch 2, after the epoch-1 checkpoint


def assert_trees_equal(a, b, *, exact: bool = True) -> None:
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for (path, x), y in zip(flat_a, flat_b):
        where = jax.tree_util.keystr(path)
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=where)


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def reference_run(easy_dataset):
    """One uninterrupted run, no checkpoints: what every resumed run must reproduce."""
    return train(CONFIG, easy_dataset, make_easy_dataset(32, seed=1), progress=False)


# --- augment ------------------------------------------------------------------------

def candidates(image: np.ndarray) -> np.ndarray:
    """All 9 x 9 x 2 crops (reflect padding 4, offsets -4..4) and their mirror images."""
    h, w, _ = image.shape
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(9) for dx in range(9)]
    return np.stack(crops + [c[:, ::-1] for c in crops])  # (162, h, w, c)


def test_augment_is_a_reflect_padded_crop_possibly_flipped():
    images = np.random.default_rng(0).random((48, 32, 32, 3), dtype=np.float32)
    out = np.asarray(jax.jit(augment)(jax.random.key(7), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == np.float32
    chosen = []
    for image, got in zip(images, out):
        matches = np.flatnonzero([np.array_equal(got, c) for c in candidates(image)])
        # random pixels: every candidate is distinct, so exactly one matches
        assert len(matches) == 1
        chosen.append(int(matches[0]))
    chosen = np.array(chosen)
    flipped, offset = chosen >= 81, chosen % 81
    # per-image randomness: both flip states and many different offsets occur
    assert 10 <= flipped.sum() <= 38
    assert len(set(offset.tolist())) >= 20
    assert len(set((offset // 9).tolist())) >= 5 and len(set((offset % 9).tolist())) >= 5


def test_augment_depends_only_on_key():
    images = jnp.asarray(np.random.default_rng(1).random((8, 32, 32, 3), dtype=np.float32))
    a = augment(jax.random.key(1), images)
    np.testing.assert_array_equal(a, augment(jax.random.key(1), images))
    assert not np.array_equal(a, augment(jax.random.key(2), images))


def test_augment_other_sizes_and_channels():
    images = jnp.asarray(np.random.default_rng(2).random((4, 12, 10, 1), dtype=np.float32))
    out = np.asarray(augment(jax.random.key(3), images))
    assert out.shape == (4, 12, 10, 1)
    for image, got in zip(np.asarray(images), out):
        assert any(np.array_equal(got, c) for c in candidates(image))


# --- learning -------------------------------------------------------------------------

def test_training_lowers_the_loss(reference_run, easy_dataset):
    history = reference_run.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["train_accuracy"] >= 0.9  # chance is 0.5 (training mode: dropout, augmentation)
    assert all(0.0 <= h["test_accuracy"] <= 1.0 for h in history)
    assert history[-1]["test_accuracy"] == 1.0
    logits = predict(reference_run.model, reference_run.variables, easy_dataset.images, batch_size=24)
    assert logits.shape == (64, 2) and logits.dtype == np.float32
    assert np.mean(logits.argmax(-1) == easy_dataset.labels) == 1.0


def test_trained_model_matches_config(reference_run):
    model = reference_run.model
    assert (model.widths, model.hidden, model.num_classes) == ((4, 8), 16, 2)
    assert reference_run.variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)


def test_same_seed_gives_identical_variables(reference_run, easy_dataset):
    again = train(CONFIG, easy_dataset, progress=False)
    assert_trees_equal(again.variables, reference_run.variables)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in reference_run.history]


def test_train_rejects_too_few_images(easy_dataset):
    with pytest.raises(ValueError, match="batch_size"):
        train(dataclasses.replace(CONFIG, batch_size=128), easy_dataset, progress=False)


# --- checkpoints ------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = CONFIG.model(2)
    tx = _optimizer(CONFIG, 4)
    fresh = init_variables(model, jax.random.key(0))
    template = TrainState(fresh["params"], fresh["batch_stats"], tx.init(fresh["params"]))
    rng = np.random.default_rng(3)
    state = jax.tree_util.tree_map(  # random params, BN stats and momentum buffers; the step count stays int
        lambda a: np.asarray(rng.normal(size=np.shape(a)), a.dtype) if jnp.issubdtype(a.dtype, jnp.floating)
        else np.asarray(a) + 5, template)
    history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    path = tmp_path / "ckpt" / CHECKPOINT_FILE
    _save_checkpoint(path, state, 2, CONFIG, history)
    assert files_in(path.parent) == [CHECKPOINT_FILE]
    loaded, epoch, loaded_history = _load_checkpoint(path, template, CONFIG)
    assert epoch == 2 and loaded_history == history
    assert_trees_equal(loaded, state)


def test_checkpoint_from_another_config_is_rejected(tmp_path, easy_dataset):
    other = dataclasses.replace(CONFIG, peak_lr=0.05)
    model = other.model(2)
    v = init_variables(model, jax.random.key(0))
    tx = _optimizer(other, 4)
    _save_checkpoint(tmp_path / CHECKPOINT_FILE, TrainState(v["params"], v["batch_stats"], tx.init(v["params"])),
                     1, other, [])
    with pytest.raises(ValueError, match="different config"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False)


def test_corrupt_checkpoint_is_rejected(tmp_path, easy_dataset):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x93garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False)


def test_finished_run_resumes_without_training(tmp_path, easy_dataset, reference_run):
    """Epoch-1 checkpoint from a crashed run, then a resumed run to the end; a
    third call finds the run finished and returns the same variables at once."""
    crash = RuntimeError("simulated crash")
    seen = []

    def crash_in_epoch_2(epoch, step):
        seen.append((epoch, step))
        if (epoch, step) == (CRASH_EPOCH, CRASH_STEP):
            raise crash

    with pytest.raises(RuntimeError) as e:
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False, on_step=crash_in_epoch_2)
    assert e.value is crash
    assert seen[-1] == (CRASH_EPOCH, CRASH_STEP)
    payload = flax.serialization.msgpack_restore((tmp_path / CHECKPOINT_FILE).read_bytes())
    assert payload["epoch"] == 1 and len(json.loads(payload["history"])) == 1
    assert files_in(tmp_path) == [CHECKPOINT_FILE]

    resumed_steps = []
    resumed = train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False,
                    on_step=lambda epoch, step: resumed_steps.append((epoch, step)))
    assert resumed_steps[0] == (1, 0) and len(resumed_steps) == 4 * (CONFIG.epochs - 1)  # epochs 2.. only
    assert_trees_equal(resumed.variables, reference_run.variables, exact=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h["loss"] for h in resumed.history],
                               [h["loss"] for h in reference_run.history], rtol=1e-6)

    again = train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False,
                  on_step=lambda *a: pytest.fail("a finished run must not train again"))
    assert_trees_equal(again.variables, resumed.variables)
    assert files_in(tmp_path) == [CHECKPOINT_FILE]


SIGKILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np
    from jaxviz.data import Dataset
    from jaxviz.train import CHECKPOINT_FILE, TrainConfig, train

    ckpt_dir, data_file, config_json = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    fields = json.loads(config_json)
    config = TrainConfig(**{**fields, "widths": tuple(fields["widths"])})
    with np.load(data_file) as z:
        dataset = Dataset(z["images"], z["labels"], tuple(z["class_names"]))

    def on_step(epoch, step):
        if (epoch, step) == ({epoch}, {step}):
            if not (ckpt_dir / CHECKPOINT_FILE).is_file():
                sys.exit("no checkpoint before the kill")
            os.kill(os.getpid(), signal.SIGKILL)

    train(config, dataset, checkpoint_dir=ckpt_dir, progress=False, on_step=on_step)
    sys.exit("the training finished: the kill did not happen")
""").replace("{epoch}", str(CRASH_EPOCH)).replace("{step}", str(CRASH_STEP))


def test_resume_after_real_sigkill(tmp_path, easy_dataset, reference_run):
    data_file = tmp_path / "data.npz"
    np.savez(data_file, images=easy_dataset.images, labels=easy_dataset.labels,
             class_names=np.array(easy_dataset.class_names))
    ckpt_dir = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "JAXVIZ_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", SIGKILL_SCRIPT, str(ckpt_dir), str(data_file), CONFIG.to_json()],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert files_in(ckpt_dir) == [CHECKPOINT_FILE]  # in particular no *.tmp file
    payload = flax.serialization.msgpack_restore((ckpt_dir / CHECKPOINT_FILE).read_bytes())
    assert payload["epoch"] == 1 and payload["config"] == CONFIG.to_json()

    resumed_steps = []
    resumed = train(CONFIG, easy_dataset, checkpoint_dir=ckpt_dir, progress=False,
                    on_step=lambda epoch, step: resumed_steps.append((epoch, step)))
    assert resumed_steps[0] == (1, 0)
    assert_trees_equal(resumed.variables, reference_run.variables, exact=False)
    assert files_in(ckpt_dir) == [CHECKPOINT_FILE]
