"""Shared fixtures: a tiny CNN with non-trivial variables, tiny uint8 datasets.

Everything here is small enough to compile and run in well under a second on
a CPU; nothing touches the network or ../shared.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxviz.data import Dataset
from jaxviz.models.cnn import CNN, init_variables

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_WIDTHS = (4, 8)
TINY_HIDDEN = 16
JAX_CACHE_KEY = pytest.StashKey[str]()  # the session's compilation cache folder


def pytest_configure(config):
    """One persistent JAX compilation cache for the whole test session, its xdist workers and every process
    they start (README blocks, the notebook's kernel, command lines, run workers): the same small programs are
    compiled in many tests and processes, and XLA's compile is most of their time on a CPU. The cache is a
    fresh folder of this session (never the user's cache), removed at the end; entries are keyed by the
    program, its compile options, the devices and the JAX version, so a hit runs the same executable."""
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist); workers inherit the variables
        cache = tempfile.mkdtemp(prefix="jaxviz-tests-jax-cache-")
        config.stash[JAX_CACHE_KEY] = cache
        os.environ.update({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # jax was imported above
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first, so that xdist (--dist loadfile) starts the long files early and the
    short ones fill in at the end; the order of the tests within a file is kept."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # a stable sort


def pytest_unconfigure(config):
    cache = config.stash.get(JAX_CACHE_KEY, None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def compiles() -> list:
    """Every XLA compilation of this process from now on (one event each): a test compares its length before and
    after a call that must not compile."""
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: events.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)
    return events


def without_compilation_cache(env: dict) -> dict:
    """``env`` for a process whose file size is limited (``ulimit -f``): its cache writes would fail and leave
    truncated entries that the session's other processes would then read."""
    return {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}


def make_tiny_model(**overrides) -> CNN:
    """``CNN(widths=(4, 8), hidden=16)``, 9 named layers, ~8.6k parameters."""
    kwargs = {"widths": TINY_WIDTHS, "hidden": TINY_HIDDEN, **overrides}
    return CNN(**kwargs)


def randomize_variables(variables: dict, seed: int) -> dict:
    """Replace every leaf by random values of the same shape.

    Fresh Flax variables have zero biases, unit BN scales, zero running means
    and unit running variances, which would hide mistakes in how batch norm
    or biases are applied; running variances stay positive.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = getattr(path[-1], "key", None)
        shape = np.shape(leaf)
        if name == "var":
            value = rng.uniform(0.5, 2.0, shape)
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("mean", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:  # kernels: keep the init's scale so activations neither vanish nor explode
            value = np.asarray(leaf)
        out.append(np.asarray(value, np.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope="session")
def tiny_model() -> CNN:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_variables(tiny_model) -> dict:
    """Variables of ``tiny_model`` with random BN statistics, scales and biases."""
    return randomize_variables(init_variables(tiny_model, jax.random.key(0)), seed=0)


def make_uint8_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_images() -> np.ndarray:
    """7 random uint8 images (N=7 is prime, so no batch size > 1 divides it)."""
    return make_uint8_images(7, seed=1)


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """12 random uint8 images, 3 classes, 4 images each."""
    return Dataset(make_uint8_images(12, seed=2), np.repeat(np.arange(3), 4), ("a", "b", "c"), source="test")


def make_easy_dataset(n: int = 64, seed: int = 0) -> Dataset:
    """Two trivially separable classes: dark noisy images (0) and bright ones (1), alternating."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels == 1, 200, 50)[:, None, None, None]
    noise = rng.integers(-40, 41, size=(n, 32, 32, 3))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Dataset(images, labels, ("dark", "bright"), source="easy")


@pytest.fixture(scope="session")
def easy_dataset() -> Dataset:
    return make_easy_dataset()


def load_example(name: str):
    """Import ``examples/<name>.py`` by path, as ``jaxviz report --model file.py:build`` does."""
    spec = importlib.util.spec_from_file_location(f"_jaxviz_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_tiny_cli_setup(root, model, variables, *, per_class: int) -> tuple:
    """A tiny CIFAR-10-shaped weights file and a folder of random 32x32 PNGs in the first 3 CIFAR-10
    classes (``per_class`` each), for command-line tests; returns ``(weights_path, folder, rng)``."""
    from PIL import Image

    import jaxviz

    weights = root / "tiny.msgpack"
    jaxviz.save_weights(weights, model, variables, metadata={"dataset": "tiny"})
    rng = np.random.default_rng(0)
    folder = root / "images"
    for name in jaxviz.CIFAR10_CLASSES[:3]:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return weights, folder, rng


def assert_one_line_error(code, err, *words):
    """Exit 2 and one error line, last on stderr (progress bars may come before it), no traceback;
    the error line holds every one of ``words``."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and sum("error:" in line for line in lines) == 1, err
    assert "error:" in lines[-1], err
    for word in words:
        assert word in lines[-1], lines[-1]
