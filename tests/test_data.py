"""Tests for jaxviz.data: Dataset, to_model_input, image folders, the embedded sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxviz.data import CIFAR10_CLASSES, Dataset, load_image_folder, load_sample, to_model_input

from conftest import make_uint8_images


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG")


# --- load_image_folder ------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    """root/{zebra,apple,mango}/*.png with random pixels; returns (root, expected dict)."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    expected = {}
    for cls, count in (("zebra", 2), ("apple", 3), ("mango", 1)):
        # written in reverse name order, so sorted reading is actually exercised
        for i in reversed(range(count)):
            arr = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)  # H=8, W=6: not square
            write_png(root / cls / f"img_{i:02d}.png", arr)
            expected[(cls, i)] = arr
    return root, expected


def test_image_folder_round_trip_sorted_classes(folder):
    root, expected = folder
    ds = load_image_folder(root)
    assert ds.class_names == ("apple", "mango", "zebra")
    assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 8, 6, 3)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 2, 2])
    want = [expected[("apple", i)] for i in range(3)] + [expected[("mango", 0)]] + \
           [expected[("zebra", i)] for i in range(2)]
    np.testing.assert_array_equal(ds.images, np.stack(want))  # PNG is lossless: exact pixels
    assert ds.source == str(root)


def test_image_folder_explicit_class_order(folder):
    root, expected = folder
    ds = load_image_folder(root, class_names=("zebra", "apple"))  # a subset, in the given order
    assert ds.class_names == ("zebra", "apple")
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.images[0], expected[("zebra", 0)])
    np.testing.assert_array_equal(ds.images[2], expected[("apple", 0)])


def test_image_folder_missing_named_class(folder):
    root, _ = folder
    with pytest.raises(FileNotFoundError, match="kiwi"):
        load_image_folder(root, class_names=("apple", "kiwi"))


def test_image_folder_cifar_classes_get_official_labels(tmp_path):
    root = tmp_path / "cifar"
    for label, cls in enumerate(CIFAR10_CLASSES):
        write_png(root / cls / "0.png", np.full((4, 4, 3), label * 20, np.uint8))
    ds = load_image_folder(root)
    assert ds.class_names == CIFAR10_CLASSES
    assert CIFAR10_CLASSES[3] == "cat" and CIFAR10_CLASSES[9] == "truck"  # the official label order
    for i in range(10):
        assert CIFAR10_CLASSES[ds.labels[i]] == CIFAR10_CLASSES[i]
        assert ds.images[i, 0, 0, 0] == ds.labels[i] * 20


def test_image_folder_converts_gray_and_rgba(tmp_path):
    root = tmp_path / "modes"
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    rgba = make_uint8_images(1, seed=3, size=4)[0]
    rgba = np.concatenate([rgba, np.full((4, 4, 1), 77, np.uint8)], axis=-1)
    write_png(root / "a" / "gray.png", gray, mode="L")
    write_png(root / "b" / "rgba.png", rgba, mode="RGBA")
    ds = load_image_folder(root)
    np.testing.assert_array_equal(ds.images[0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds.images[1], rgba[..., :3])


def test_image_folder_mixed_sizes_names_the_file(tmp_path):
    root = tmp_path / "mixed"
    write_png(root / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    write_png(root / "b" / "odd_one.png", np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="odd_one.png") as e:
        load_image_folder(root)
    assert "9x8" in str(e.value) and "8x8" in str(e.value)


def test_image_folder_non_image_file(tmp_path):
    root = tmp_path / "junk"
    write_png(root / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    (root / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        load_image_folder(root)


def test_image_folder_truncated_png(tmp_path):
    root = tmp_path / "trunc"
    write_png(root / "a" / "0.png", make_uint8_images(1, seed=4)[0])
    data = (root / "a" / "0.png").read_bytes()
    (root / "a" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="1.png"):
        load_image_folder(root)


def test_image_folder_ignores_hidden_entries(tmp_path):
    root = tmp_path / "hidden"
    write_png(root / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / ".cache").mkdir()
    ds = load_image_folder(root)
    assert ds.class_names == ("a",) and len(ds) == 1


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "file.png")


def test_image_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_image_folder(tmp_path / "empty")  # no class folders
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")  # a class folder with no files


# --- to_model_input ----------------------------------------------------------------

def test_to_model_input_values_and_dtype():
    images = np.array([0, 1, 51, 128, 254, 255], np.uint8).reshape(1, 1, 2, 3)
    x = to_model_input(images)
    assert x.dtype == np.float32 and x.shape == images.shape
    want = np.array([0.0, 1 / 255, 0.2, 128 / 255, 254 / 255, 1.0]).reshape(1, 1, 2, 3)
    np.testing.assert_allclose(x, want, rtol=1e-7, atol=0)
    assert x.min() == 0.0 and x.max() == 1.0
    images = make_uint8_images(3, seed=5)
    np.testing.assert_array_equal(to_model_input(images), np.float32(images) / np.float32(255))


def test_to_model_input_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(np.zeros((1, 32, 32, 3), np.int64))
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((1, 32, 32, 4), np.uint8))


# --- Dataset -------------------------------------------------------------------------

def test_dataset_basics(tiny_dataset):
    assert len(tiny_dataset) == 12
    assert tiny_dataset.labels.dtype == np.int64
    ds = Dataset(np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 1], ["x", "y"])
    assert ds.class_names == ("x", "y") and ds.labels.dtype == np.int64


@pytest.mark.parametrize("labels", [[0, 1, 2], [-1, 0, 1], [0, 0, 5]])
def test_dataset_rejects_labels_out_of_range(labels):
    with pytest.raises(ValueError, match="labels"):
        Dataset(np.zeros((3, 2, 2, 3), np.uint8), np.array(labels), ("x", "y"))


def test_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="labels"):
        Dataset(np.zeros((3, 2, 2, 3), np.uint8), np.array([0, 1]), ("x", "y"))
    with pytest.raises(ValueError, match="labels"):
        Dataset(np.zeros((3, 2, 2, 3), np.uint8), np.zeros((3, 1), np.int64), ("x", "y"))


def test_dataset_rejects_bad_images():
    with pytest.raises(TypeError):
        Dataset(np.zeros((3, 2, 2, 3), np.float32), np.zeros(3, np.int64), ("x", "y"))
    with pytest.raises(ValueError):
        Dataset(np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int64), ("x", "y"))


def test_dataset_subset(tiny_dataset):
    idx = [11, 0, 5, 5]
    sub = tiny_dataset.subset(idx)
    np.testing.assert_array_equal(sub.images, tiny_dataset.images[idx])
    np.testing.assert_array_equal(sub.labels, [2, 0, 1, 1])
    assert sub.class_names == tiny_dataset.class_names and sub.source == tiny_dataset.source
    assert len(tiny_dataset.subset(np.array([], np.int64))) == 0
    with pytest.raises(ValueError, match="indices"):
        tiny_dataset.subset([0, 12])


# --- the embedded sample -----------------------------------------------------------

def test_load_sample():
    ds = load_sample()
    assert ds.images.shape == (1000, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (1000,) and ds.labels.dtype == np.int64
    assert ds.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), np.full(10, 100))
    # real photos: varied pixels, and no image stored twice
    assert 30 < ds.images.std() < 100
    flat = ds.images.reshape(1000, -1)
    assert len(np.unique(flat, axis=0)) == 1000
