"""Tests for jaxviz.models.train: augmentation, learning, checkpoints, determinism, resume after crashes."""

from __future__ import annotations

import dataclasses
import importlib
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

import jaxviz
from jaxviz.cli import main as cli_main
from jaxviz.data import Dataset
from jaxviz.models.adapters import from_cnn
from jaxviz.models.checkpoint import CHECKPOINT_FILE, load_checkpoint, run_identity, save_checkpoint
from jaxviz.models.cnn import init_variables
from jaxviz.models.train import TrainConfig, TrainingDiverged, TrainState, _optimizer, augment, train

from conftest import make_easy_dataset

train_module = importlib.import_module("jaxviz.models.train")  # `jaxviz.models.train` as an attribute is the function

REPO_ROOT = Path(__file__).resolve().parents[1]

# 64 images / batch 16 = 4 steps per epoch, 20 steps in all (compiling dominates the time).
CONFIG = TrainConfig(epochs=5, batch_size=16, widths=(4, 8), hidden=16, seed=0)
CRASH_EPOCH, CRASH_STEP = 1, 2  # 0-based: the middle of epoch 2, after the epoch-1 checkpoint


def assert_trees_equal(a, b, *, exact: bool = True) -> None:
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        where = jax.tree_util.keystr(path)
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=where)


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def identity_of(config: TrainConfig, train_set: Dataset, test_set: Dataset | None) -> dict:
    """The run record ``train`` gives a run of ``config`` on this data."""
    return run_identity(dataclasses.asdict(config), config.model(len(train_set.class_names)), train_set, test_set)


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
    for image, got in zip(images, out, strict=True):
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
    for image, got in zip(np.asarray(images), out, strict=True):
        assert any(np.array_equal(got, c) for c in candidates(image))


# --- learning -------------------------------------------------------------------------

def test_training_lowers_the_loss(reference_run, easy_dataset):
    history = reference_run.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["train_accuracy"] >= 0.9  # chance is 0.5 (training mode: dropout, augmentation)
    assert all(0.0 <= h["test_accuracy"] <= 1.0 for h in history)
    assert history[-1]["test_accuracy"] == 1.0
    network = from_cnn(reference_run.model, reference_run.variables, easy_dataset.class_names)
    logits = jaxviz.layer_features(network, easy_dataset.images, batch_size=24)  # default: the output layer
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

def test_checkpoint_round_trip(tmp_path, easy_dataset):
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
    identity = identity_of(CONFIG, easy_dataset, None)
    save_checkpoint(path, state, 2, identity, history)
    assert files_in(path.parent) == [CHECKPOINT_FILE]
    loaded, epoch, loaded_history = load_checkpoint(path, template, identity)
    assert epoch == 2 and loaded_history == history
    assert_trees_equal(loaded, state)


def test_checkpoint_from_another_config_is_rejected(tmp_path, easy_dataset):
    other = dataclasses.replace(CONFIG, peak_lr=0.05)
    model = other.model(2)
    v = init_variables(model, jax.random.key(0))
    tx = _optimizer(other, 4)
    save_checkpoint(tmp_path / CHECKPOINT_FILE, TrainState(v["params"], v["batch_stats"], tx.init(v["params"])),
                    1, identity_of(other, easy_dataset, None), [{"epoch": 1, "loss": 1.0}])
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
    from jaxviz.models.train import CHECKPOINT_FILE, TrainConfig, train

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


@pytest.mark.slow
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


# --- hyper-parameters ---------------------------------------------------------------------

@pytest.mark.parametrize("field, value, error", [
    ("epochs", 0, ValueError), ("epochs", -1, ValueError), ("epochs", 1.5, TypeError), ("epochs", True, TypeError),
    ("batch_size", 0, ValueError), ("batch_size", -1, ValueError), ("batch_size", "8", TypeError),
    ("peak_lr", 0.0, ValueError), ("peak_lr", -1.0, ValueError), ("peak_lr", float("nan"), ValueError),
    ("peak_lr", float("inf"), ValueError), ("peak_lr", "0.1", TypeError),
    ("momentum", -0.1, ValueError), ("momentum", 1.0, ValueError),
    ("weight_decay", -1e-4, ValueError), ("weight_decay", float("inf"), ValueError),
    ("label_smoothing", -0.1, ValueError), ("label_smoothing", 1.0, ValueError),
    ("warmup_fraction", -0.1, ValueError), ("warmup_fraction", 1.0, ValueError),
    ("dropout", -0.1, ValueError), ("dropout", 1.0, ValueError), ("dropout", float("nan"), ValueError),
    ("widths", (), ValueError), ("widths", (4,) * 6, ValueError), ("widths", 4, TypeError),
    ("widths", (4, 0), ValueError), ("widths", (4.5,), TypeError),
    ("convs_per_block", 0, ValueError), ("hidden", 0, ValueError),
    ("seed", 2**63, ValueError), ("seed", 0.5, TypeError),
])
def test_config_rejects_bad_hyper_parameters(field, value, error):
    with pytest.raises(error, match=rf"^{field}(\[\d+\])?: expected .*, got ") as e:
        dataclasses.replace(CONFIG, **{field: value})
    assert isinstance(e.value, TypeError) == (error is TypeError)  # the kind of error, exactly


def test_config_accepts_edge_values_and_normalises_types():
    config = TrainConfig(epochs=np.int64(1), batch_size=np.int32(1), peak_lr=1, momentum=0, weight_decay=0,
                         label_smoothing=0, warmup_fraction=0, dropout=0, widths=[4, np.int64(8)], seed=-3)
    assert config.widths == (4, 8) and type(config.epochs) is int and type(config.peak_lr) is float
    hash(config)  # frozen and hashable, widths a tuple
    assert json.loads(config.to_json())["widths"] == [4, 8]


def test_single_step_run_has_a_valid_schedule():
    """One epoch of one step: optax used to refuse the cosine decay of 0 steps."""
    config = dataclasses.replace(CONFIG, epochs=1)
    v = init_variables(config.model(2), jax.random.key(0))
    tx = _optimizer(config, 1)
    grads = jax.tree_util.tree_map(jnp.ones_like, v["params"])
    updates, _ = tx.update(grads, tx.init(v["params"]), v["params"])
    leaves = jax.tree_util.tree_leaves(updates)
    assert all(np.isfinite(np.asarray(u)).all() for u in leaves) and any(np.any(np.asarray(u) != 0) for u in leaves)


# --- datasets -------------------------------------------------------------------------------

def test_train_rejects_an_empty_dataset():
    empty = Dataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), ("dark", "bright"))
    with pytest.raises(ValueError, match=r"train_set: expected at least batch_size=16 images, got 0 \(.*empty"):
        train(CONFIG, empty, progress=False)


@pytest.mark.parametrize("case", ["empty", "other_classes", "other_size"])
def test_train_rejects_an_unusable_test_set(case, easy_dataset):
    test_set = {
        "empty": Dataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), easy_dataset.class_names),
        "other_classes": Dataset(easy_dataset.images[:4], easy_dataset.labels[:4], ("a", "b")),
        "other_size": Dataset(easy_dataset.images[:4, :16, :16], easy_dataset.labels[:4], easy_dataset.class_names),
    }[case]
    with pytest.raises(ValueError, match="test_set: expected"):
        train(CONFIG, easy_dataset, test_set, progress=False, on_step=lambda *a: pytest.fail("trained"))


def test_train_rejects_images_of_another_size(easy_dataset):
    small = Dataset(easy_dataset.images[:, :8, :8], easy_dataset.labels, easy_dataset.class_names)
    with pytest.raises(ValueError, match=r"train_set: expected images of shape \(N, 32, 32, 3\), got \(64, 8, 8, 3\)"):
        train(CONFIG, small, progress=False)


# --- checkpoints belong to one run ---------------------------------------------------------------

def fresh_state(config: TrainConfig, num_classes: int) -> TrainState:
    v = init_variables(config.model(num_classes), jax.random.key(0))
    tx = _optimizer(config, 4)
    return TrainState(v["params"], v["batch_stats"], tx.init(v["params"]))


def write_checkpoint(directory: Path, config: TrainConfig, train_set: Dataset, test_set: Dataset | None = None,
                     epoch: int | None = None) -> bytes:
    """A checkpoint of a run of ``config`` on ``train_set`` (finished unless ``epoch``); returns its bytes."""
    epoch = config.epochs if epoch is None else epoch
    path = directory / CHECKPOINT_FILE
    save_checkpoint(path, fresh_state(config, len(train_set.class_names)), epoch,
                    identity_of(config, train_set, test_set), [{"epoch": e + 1, "loss": 1.0} for e in range(epoch)])
    return path.read_bytes()


def three_classes(n: int = 64) -> Dataset:
    ds = make_easy_dataset(n)
    return Dataset(ds.images, np.arange(n) % 3, ("a", "b", "c"))


OTHER_RUNS = {  # checkpoint of: (config, train_set, test_set) -> fragments of the refusal
    "other_images": (lambda: (CONFIG, make_easy_dataset(64, seed=5), None),
                     ["different training data", "other content", "sha256"]),
    "fewer_images": (lambda: (CONFIG, make_easy_dataset(48), None), ["different training data", "48 images"]),
    "other_class_names": (lambda: (CONFIG, Dataset(make_easy_dataset().images, make_easy_dataset().labels,
                                                   ("cat", "dog")), None),
                          ["different training data", "class names ['cat', 'dog'] in the checkpoint, "
                                                      "['dark', 'bright'] now"]),
    "other_num_classes": (lambda: (CONFIG, three_classes(), None),
                          ["class names ['a', 'b', 'c']", "different model (num_classes 3 in the checkpoint, 2 now)"]),
    "other_config": (lambda: (dataclasses.replace(CONFIG, peak_lr=0.05), make_easy_dataset(), None),
                     ["different config (peak_lr 0.05 in the checkpoint, 0.1 now)"]),
    "other_architecture": (lambda: (dataclasses.replace(CONFIG, widths=(4,)), make_easy_dataset(), None),
                           ["different config (widths [4] in the checkpoint, [4, 8] now)", "different model"]),
    "with_test_set": (lambda: (CONFIG, make_easy_dataset(), make_easy_dataset(32, seed=1)),
                      ["different test data (32 images in the checkpoint, none now)"]),
}


@pytest.mark.parametrize("case", sorted(OTHER_RUNS))
def test_checkpoint_of_another_run_is_refused(case, tmp_path, easy_dataset):
    """The bug: a checkpoint of another run was resumed (or, finished, returned as this run's weights)."""
    make, fragments = OTHER_RUNS[case]
    before = write_checkpoint(tmp_path, *make())
    with pytest.raises(ValueError) as e:
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False, on_step=lambda *a: pytest.fail("trained"))
    message = str(e.value)
    assert message.startswith(f"checkpoint_dir: {str(tmp_path)!r} holds another run, not this one: ")
    for fragment in fragments + ["--fresh", "resume=False", "--checkpoint-dir"]:
        assert fragment in message
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_checkpoint_without_a_run_record_is_refused(tmp_path, easy_dataset):
    """A checkpoint of an older jaxviz (state, epoch, config, history only) cannot be matched to a run."""
    state = fresh_state(CONFIG, 2)
    payload = {"state": flax.serialization.to_state_dict(state), "epoch": CONFIG.epochs, "config": CONFIG.to_json(),
               "history": json.dumps([{"epoch": e + 1} for e in range(CONFIG.epochs)])}
    (tmp_path / CHECKPOINT_FILE).write_bytes(flax.serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"without a record of the data and settings .*--fresh .*resume=False"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=False)


def test_fresh_run_overwrites_the_checkpoint_of_another_run(tmp_path, easy_dataset):
    config = dataclasses.replace(CONFIG, epochs=1)
    write_checkpoint(tmp_path, config, three_classes())
    steps = []
    fresh = train(config, easy_dataset, checkpoint_dir=tmp_path, resume=False, progress=False,
                  on_step=lambda *a: steps.append(a))
    assert len(steps) == 4
    payload = flax.serialization.msgpack_restore((tmp_path / CHECKPOINT_FILE).read_bytes())
    assert json.loads(payload["identity"]) == identity_of(config, easy_dataset, None)
    # the same data from elsewhere (copied arrays, another source) is the same run: resumed, nothing to train
    same = Dataset(easy_dataset.images.copy(), easy_dataset.labels.copy(), easy_dataset.class_names, source="copy")
    again = train(config, same, checkpoint_dir=tmp_path, progress=False,
                  on_step=lambda *a: pytest.fail("a finished run must not train again"))
    assert_trees_equal(again.variables, fresh.variables)
    assert files_in(tmp_path) == [CHECKPOINT_FILE]


def test_checkpoint_dir_that_is_a_file_is_refused_before_any_work(tmp_path, easy_dataset):
    (tmp_path / "ckpt").write_text("not a directory")
    with pytest.raises(ValueError, match=r"checkpoint_dir: expected a directory .*ckpt', which is a file"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path / "ckpt", progress=False)
    with pytest.raises(ValueError, match=r"checkpoint_dir: cannot create directory .*sub': .*ckpt' is a file"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path / "ckpt" / "sub", progress=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to any directory")
def test_unwritable_checkpoint_dir_is_refused_before_any_work(tmp_path, easy_dataset):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="checkpoint_dir: cannot write to directory"):
            train(CONFIG, easy_dataset, checkpoint_dir=locked, progress=False)
    finally:
        locked.chmod(0o700)


# --- divergence ---------------------------------------------------------------------------------

def strict_json(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def inject_non_finite(monkeypatch, what: str, at_call: int) -> None:
    """Make the ``at_call``-th training step (1-based) return a NaN loss or NaN parameters."""
    real = train_module._make_train_step

    def make(*args):
        step, calls = real(*args), [0]

        def wrapped(state, *args):
            state, loss, correct = step(state, *args)
            calls[0] += 1
            if calls[0] == at_call:
                if what == "loss":
                    loss = jnp.float32(np.nan)
                else:
                    state = state._replace(params=jax.tree_util.tree_map(lambda p: p * np.inf, state.params))
            return state, loss, correct

        return wrapped

    monkeypatch.setattr(train_module, "_make_train_step", make)


@pytest.mark.parametrize("what, at_call", [("loss", 6), ("params", 8)])  # epoch 2: step 2 / its last step
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(what, at_call, tmp_path, easy_dataset,
                                                                      monkeypatch, capsys):
    inject_non_finite(monkeypatch, what, at_call)
    saved = {}

    def remember_checkpoint(epoch, step):
        if (epoch, step) == (1, 0):
            saved["bytes"] = (tmp_path / CHECKPOINT_FILE).read_bytes()

    with pytest.raises(TrainingDiverged, match=r"training diverged: .* in epoch 2 .*checkpoint of epoch 1 .*kept"):
        train(CONFIG, easy_dataset, checkpoint_dir=tmp_path, progress=True, on_step=remember_checkpoint)
    assert issubclass(TrainingDiverged, ValueError)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == saved["bytes"]
    state, epoch, history = load_checkpoint(tmp_path / CHECKPOINT_FILE, fresh_state(CONFIG, 2),
                                            identity_of(CONFIG, easy_dataset, None))
    assert epoch == 1 and len(history) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state)
               if jnp.issubdtype(x.dtype, jnp.inexact))
    records = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("{")]
    assert [strict_json(r)["epoch"] for r in records] == [1]


def test_huge_learning_rate_diverges(tmp_path):
    config = TrainConfig(epochs=3, batch_size=16, widths=(4,), hidden=8, peak_lr=1e6)
    data = make_easy_dataset(32)
    with pytest.raises(TrainingDiverged, match="peak_lr=1e\\+06"):
        train(config, data, checkpoint_dir=tmp_path, progress=False)
    if (tmp_path / CHECKPOINT_FILE).exists():  # epochs before the divergence: finite, loadable
        state, _, history = load_checkpoint(tmp_path / CHECKPOINT_FILE, fresh_state(config, 2),
                                            identity_of(config, data, None))
        strict_json(json.dumps(history))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state)
                   if jnp.issubdtype(x.dtype, jnp.inexact))


# --- command line -------------------------------------------------------------------------------

def image_folder(root: Path, class_names: tuple[str, ...], per_class: int = 4, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in class_names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


TINY_CLI_MODEL = ["--widths", "4", "--hidden", "8"]  # a tiny CNN through the architecture options


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``jaxviz train ARGS``: exit code, stdout, stderr (usage errors exit through argparse's SystemExit)."""
    try:
        code = cli_main(["train", *map(str, args)])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The error: one line, the last of stderr (progress bars and epoch records may come before it)."""
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("jaxviz train: error: "), err
    return errors[0]


def test_cli_refuses_a_checkpoint_of_other_data_and_fresh_starts_over(tmp_path, capsys, monkeypatch):
    """The bug report: a second `jaxviz train` on folder B resumed folder A's run from the default directory."""
    monkeypatch.chdir(tmp_path)  # the default --checkpoint-dir ./jaxviz-checkpoints
    folder_a = image_folder(tmp_path / "A", ("a", "b"))
    folder_b = image_folder(tmp_path / "B", ("x", "y", "z"), seed=1)
    common = ["--epochs", "1", "--batch-size", "4", *TINY_CLI_MODEL]
    code, out, err = run_cli(capsys, "--data", "folder", "--data-dir", folder_a, *common, "--out", "wA.msgpack")
    assert code == 0, err
    assert len(strict_json(out)["history"]) == 1
    assert [strict_json(line)["epoch"] for line in err.replace("\r", "\n").splitlines() if line.startswith("{")] == [1]

    code, out, err = run_cli(capsys, "--data", "folder", "--data-dir", folder_b, *common, "--out", "wB.msgpack")
    assert code == 2 and out == ""
    line = one_error_line(err)
    for fragment in ["'jaxviz-checkpoints'", "class names ['a', 'b'] in the checkpoint, ['x', 'y', 'z'] now",
                     "--fresh", "--checkpoint-dir"]:
        assert fragment in line
    assert not (tmp_path / "wB.msgpack").exists()

    code, out, err = run_cli(capsys, "--data", "folder", "--data-dir", folder_b, *common, "--out", "wB.msgpack",
                             "--fresh")
    assert code == 0, err
    assert strict_json(out)["weights"] == "wB.msgpack"
    weights = jaxviz.load_weights(tmp_path / "wB.msgpack")
    assert weights.class_names == ("x", "y", "z")
    assert (weights.model.widths, weights.model.hidden) == ((4,), 8)  # the architecture options were used


@pytest.mark.parametrize("args, flag, given", [
    # ints are refused by the parser ("argument --epochs: ..."), the rest by TrainConfig, under the option's name;
    # --lr is an alias of --peak-lr, whose name the message gives
    (["--batch-size", "0"], "--batch-size", "0"), (["--batch-size", "-1"], "--batch-size", "-1"),
    (["--epochs", "0"], "--epochs", "0"), (["--epochs", "-1"], "--epochs", "-1"), (["--epochs", "x"], "--epochs", "x"),
    (["--lr", "-1"], "--peak-lr", "-1.0"), (["--lr", "0"], "--peak-lr", "0.0"), (["--lr", "nan"], "--peak-lr", "nan"),
    (["--lr", "inf"], "--peak-lr", "inf"), (["--peak-lr", "-1"], "--peak-lr", "-1.0"),
    (["--momentum", "1"], "--momentum", "1.0"), (["--dropout", "nan"], "--dropout", "nan"),
    (["--widths", "4,0"], "--widths[1]", "got 0"), (["--widths", "4,4,4,4,4,4"], "--widths", "6 values"),
    (["--widths", "4.5"], "--widths", "4.5"), (["--hidden", "0"], "--hidden", "0"),
])
def test_cli_rejects_bad_settings_before_any_work(args, flag, given, tmp_path, capsys):
    code, out, err = run_cli(capsys, "--data", "folder", "--data-dir", tmp_path / "no-such-folder", *args,
                             "--checkpoint-dir", tmp_path / "ckpt", "--out", tmp_path / "w.msgpack")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert line.startswith((f"jaxviz train: error: {flag}: expected ",
                            f"jaxviz train: error: argument {flag}: expected ")), line
    assert given in line, line
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "w.msgpack").exists()


@pytest.mark.parametrize("case", ["ckpt_is_file", "ckpt_under_file", "out_is_dir", "out_under_file"])
def test_cli_checks_outputs_before_loading_data(case, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    ckpt, out, expected = {
        "ckpt_is_file": ("afile", "w.msgpack", "--checkpoint-dir: expected a directory for checkpoints, got"),
        "ckpt_under_file": ("afile/ckpt", "w.msgpack", "--checkpoint-dir: cannot create directory"),
        "out_is_dir": ("ckpt", "adir", "--out: expected a file path, got"),
        "out_under_file": ("ckpt", "afile/w.msgpack", "--out: cannot write"),
    }[case]
    code, stdout, err = run_cli(capsys, "--data", "folder", "--data-dir", tmp_path / "no-such-folder",
                                "--checkpoint-dir", tmp_path / ckpt, "--out", tmp_path / out)
    assert code == 2 and stdout == ""
    line = one_error_line(err)
    assert expected in line and ("is a file" in line or "is a directory" in line)


def test_cli_diverging_run_fails_cleanly(tmp_path, capsys):
    folder = image_folder(tmp_path / "A", ("a", "b"))
    code, out, err = run_cli(capsys, "--data", "folder", "--data-dir", folder, "--epochs", "2", "--batch-size", "4",
                             "--lr", "1e6", *TINY_CLI_MODEL, "--checkpoint-dir", tmp_path / "ckpt",
                             "--out", tmp_path / "w.msgpack")
    assert code == 2 and out == ""
    assert "training diverged" in one_error_line(err)
    assert not (tmp_path / "w.msgpack").exists()
    for line in err.replace("\r", "\n").splitlines():
        if line.startswith("{"):
            strict_json(line)


def test_predict_refuses_model_input_and_other_sizes(tiny_model, tiny_variables, tiny_images):
    """Predicting is ``layer_features`` at the output layer (``jaxviz.train.predict`` is gone)."""
    network = from_cnn(tiny_model, tiny_variables)
    # float input in [0, 1] would be divided by 255 again: accuracy would silently be chance
    with pytest.raises(TypeError, match="images.*uint8"):
        jaxviz.layer_features(network, tiny_images.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="32x32 .* got 64x64 images"):
        jaxviz.layer_features(network, np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        jaxviz.layer_features(network, np.zeros((0, 32, 32, 3), np.uint8))
