"""Tests for jaxviz.models.weights: save/load round trip, every rejection path, the shipped weights."""

from __future__ import annotations

import dataclasses
import os

import flax.serialization
import jax
import numpy as np
import pytest

from jaxviz._io import file_digest
from jaxviz.data import CIFAR10_CLASSES, load_sample
from jaxviz.engine.activations import layer_features
from jaxviz.models.adapters import from_cnn
from jaxviz.models.cnn import CNN
from jaxviz.models.network import Network
from jaxviz.models.weights import (
    PRETRAINED_FILE,
    Weights,
    load_pretrained,
    load_weights,
    pretrained_sha256,
    save_weights,
)

from conftest import make_tiny_model
from numerics import assert_close

# The sample accuracy recorded when the shipped weights were trained.
MEASURED_SAMPLE_ACCURACY = 0.864  # sample_accuracy in benchmarks/results/pretrained_training.json
# A different machine or backend may flip a few borderline predictions out of 1,000.
SAMPLE_ACCURACY_TOLERANCE = 0.01

CLASS_NAMES = tuple(f"class_{i}" for i in range(10))
METADATA = {"note": "tiny", "accuracy": 0.5, "nested": {"epochs": [1, 2]}}


@pytest.fixture
def saved(tmp_path, tiny_model, tiny_variables):
    path = tmp_path / "w" / "tiny.msgpack"
    digest = save_weights(path, tiny_model, tiny_variables, class_names=CLASS_NAMES, metadata=METADATA)
    return path, digest


def rewrite(path, edit) -> None:
    """Load the raw msgpack document, ``edit`` it in place, write it back."""
    payload = flax.serialization.msgpack_restore(path.read_bytes())
    edit(payload)
    path.write_bytes(flax.serialization.msgpack_serialize(payload))


def test_round_trip(saved, tiny_model, tiny_variables):
    path, digest = saved
    assert digest == file_digest(path) and len(digest) == 64
    weights = load_weights(path)
    assert isinstance(weights, Weights)
    assert weights.model == tiny_model
    assert weights.class_names == CLASS_NAMES
    assert weights.metadata == METADATA
    flat, tree = jax.tree_util.tree_flatten_with_path(weights.variables)
    flat_want, tree_want = jax.tree_util.tree_flatten(tiny_variables)
    assert tree == tree_want
    for (where, got), want in zip(flat, flat_want):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(want), err_msg=jax.tree_util.keystr(where))


def test_round_trip_with_checks(saved, tiny_model):
    path, digest = saved
    weights = load_weights(path, sha256=digest, model=tiny_model)
    assert weights.model == tiny_model and weights.class_names == CLASS_NAMES and weights.metadata == METADATA


def test_weights_hold_their_network_and_are_frozen(saved, tiny_model):
    path, _ = saved
    weights = load_weights(path)
    net = weights.network
    assert isinstance(net, Network)
    assert net.variables is weights.variables
    assert net.class_names == CLASS_NAMES and net.is_classifier
    assert net.layer_names == tiny_model.layer_names() and net.output_layer == "logits"
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.model = CNN()
    with pytest.raises(TypeError):  # the network is made from the other fields, not passed
        Weights(tiny_model, weights.variables, CLASS_NAMES, {}, network=net)
    again = Weights(tiny_model, weights.variables, list(CLASS_NAMES), {})
    assert again.class_names == CLASS_NAMES and again.network.class_names == CLASS_NAMES


def test_loaded_weights_predict_like_the_originals(saved, tiny_model, tiny_variables, tiny_images):
    path, _ = saved
    weights = load_weights(path)
    # one program, equal variables: bitwise equal outputs
    program = weights.network.uint8_fn("logits")
    np.testing.assert_array_equal(program(weights.variables, tiny_images), program(tiny_variables, tiny_images))
    # layer_features defaults to the output layer (what predict used to return)
    got = layer_features(weights.network, tiny_images)
    want = layer_features(from_cnn(tiny_model, tiny_variables), tiny_images, layer="logits")
    assert got.shape == (len(tiny_images), 10) and got.dtype == np.float32
    assert_close(got, want)


def test_save_leaves_no_temporary_file(saved):
    path, _ = saved
    assert os.listdir(path.parent) == [path.name]
    weights = load_weights(path)
    save_weights(path, weights.model, weights.variables, class_names=CLASS_NAMES)  # overwrite in place
    assert os.listdir(path.parent) == [path.name]


def test_default_metadata_and_class_names(tmp_path, tiny_model, tiny_variables):
    path = tmp_path / "defaults.msgpack"
    save_weights(path, tiny_model, tiny_variables)
    weights = load_weights(path)
    assert weights.class_names == CIFAR10_CLASSES and weights.metadata == {}


def test_save_rejects_wrong_class_count(tmp_path, tiny_model, tiny_variables):
    with pytest.raises(ValueError, match="class_names"):
        save_weights(tmp_path / "x.msgpack", tiny_model, tiny_variables, class_names=("a", "b"))
    assert not (tmp_path / "x.msgpack").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.msgpack"):
        load_weights(tmp_path / "absent.msgpack")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "not_msgpack_dict"])
def test_corrupt_file_names_the_path(saved, damage):
    path, _ = saved
    data = path.read_bytes()
    if damage == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(flax.serialization.msgpack_serialize([1, 2, 3]))
    with pytest.raises(ValueError, match="tiny.msgpack"):
        load_weights(path)


def test_wrong_format_marker(saved):
    path, _ = saved
    rewrite(path, lambda p: p.update(format="something-else"))
    with pytest.raises(ValueError, match="not a jaxviz weights file"):
        load_weights(path)
    rewrite(path, lambda p: p.update(format="jaxviz-weights", version=2))
    with pytest.raises(ValueError, match="version"):
        load_weights(path)


def test_wrong_sha256(saved):
    path, digest = saved
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError, match="SHA-256") as e:
        load_weights(path, sha256=wrong)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("other", [make_tiny_model(widths=(4, 16)), make_tiny_model(hidden=32),
                                   make_tiny_model(convs_per_block=1), make_tiny_model(num_classes=5), CNN()])
def test_weights_for_another_architecture(saved, other):
    path, _ = saved
    with pytest.raises(ValueError, match="architecture"):
        load_weights(path, model=other)


def test_wrong_variable_shape_names_the_layer(saved):
    path, _ = saved

    def edit(payload):
        payload["variables"]["params"]["conv3"]["kernel"] = np.zeros((3, 3, 4, 7), np.float32)

    rewrite(path, edit)
    with pytest.raises(ValueError, match="conv3/kernel") as e:
        load_weights(path)
    assert "(3, 3, 4, 7)" in str(e.value) and "(3, 3, 4, 8)" in str(e.value)


def test_wrong_batch_stats_shape_names_the_layer(saved):
    path, _ = saved
    rewrite(path, lambda p: p["variables"]["batch_stats"]["conv2_bn"].update(var=np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="conv2_bn/var"):
        load_weights(path)


def test_missing_and_unexpected_variables(saved):
    path, _ = saved
    rewrite(path, lambda p: p["variables"]["params"].pop("fc1"))
    with pytest.raises(ValueError, match="missing /params/fc1"):
        load_weights(path)
    rewrite(path, lambda p: p["variables"]["params"].update(
        fc1={"kernel": np.zeros((512, 16), np.float32), "bias": np.zeros(16, np.float32)},
        fc2={"kernel": np.zeros((16, 16), np.float32)}))
    with pytest.raises(ValueError, match="fc2"):
        load_weights(path)


def test_architecture_record_disagreeing_with_variables(saved):
    # The header says hidden=32 while the arrays are for hidden=16.
    path, _ = saved
    rewrite(path, lambda p: p["architecture"].update(hidden=32))
    with pytest.raises(ValueError, match="/params/fc1/"):
        load_weights(path)


# --- the shipped weights -------------------------------------------------------------

def pretrained_path():
    from jaxviz.models.weights import _pretrained_path
    return _pretrained_path()


def test_pretrained_file_matches_manifest():
    path = pretrained_path()
    assert path.name == PRETRAINED_FILE
    assert path.is_file(), f"{path} is missing: train it with benchmarks/train_pretrained.py"
    digest = pretrained_sha256()
    assert len(digest) == 64 and digest == file_digest(path)


def test_pretrained_weights_accuracy_on_sample():
    weights = load_pretrained()
    assert weights.class_names == CIFAR10_CLASSES == weights.network.class_names
    assert weights.model == CNN()  # the documented default architecture
    sample = load_sample()
    logits = layer_features(weights.network, sample.images)
    accuracy = float(np.mean(np.argmax(logits, -1) == sample.labels))
    assert accuracy >= MEASURED_SAMPLE_ACCURACY - SAMPLE_ACCURACY_TOLERANCE
    # the number recorded inside the weights file agrees with this measurement
    assert abs(weights.metadata["sample_accuracy"] - accuracy) <= SAMPLE_ACCURACY_TOLERANCE
