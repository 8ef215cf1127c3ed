"""Tests for jaxviz.data: Dataset, image folders, the embedded sample; and how pixels become model input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxviz import InputSpec, load_pretrained
from jaxviz.data import CIFAR10_CLASSES, Dataset, load_image_folder, load_sample, to_grayscale

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
    with pytest.raises(FileNotFoundError, match="nowhere") as e:
        load_image_folder(tmp_path / "nowhere")
    assert "does not exist" in str(e.value)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as e:
        load_image_folder(tmp_path / "file.png")
    msg = str(e.value)
    assert msg.startswith("root:") and str(tmp_path / "file.png") in msg and "is a file" in msg


def test_image_folder_of_images_without_class_folders_says_so(tmp_path):
    """The usual slip: passing a class folder (images directly inside) instead of the folder above it."""
    root = tmp_path / "cats"
    write_png(root / "cat_001.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="class sub-folders") as e:
        load_image_folder(root)
    assert "cat_001.png" in str(e.value) and "root/<class>/<image>" in str(e.value)


def test_image_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_image_folder(tmp_path / "empty")  # no class folders
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")  # a class folder with no files


def test_image_folder_refuses_an_empty_class_folder(tmp_path):
    """An empty class folder used to become a class without images (shifting later labels)."""
    root = tmp_path / "imgs"
    write_png(root / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    write_png(root / "c" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (root / "b").mkdir()
    (root / "b" / ".DS_Store").write_bytes(b"junk")  # hidden files do not count as images
    (root / "b" / "nested").mkdir()  # nor do sub-folders
    with pytest.raises(ValueError, match="no images") as e:
        load_image_folder(root)
    msg = str(e.value)
    assert str(root / "b") in msg and "remove" in msg
    with pytest.raises(ValueError, match="no images") as e:
        load_image_folder(root, class_names=("c", "b"))
    msg = str(e.value)
    assert msg.startswith("class_names:") and str(root / "b") in msg and "leave 'b' out" in msg
    ds = load_image_folder(root, class_names=("c", "a"))  # leaving it out works
    assert ds.class_names == ("c", "a") and len(ds) == 2


@pytest.mark.parametrize("class_names, error, words", [
    ("apple", TypeError, ["single string", "'apple'"]),
    (["apple", 3], TypeError, ["3", "int"]),
    (5, TypeError, ["int"]),
    ([], ValueError, ["at least one"]),
    (["apple", "zebra", "apple"], ValueError, ["distinct", "'apple'"]),
])
def test_image_folder_bad_class_names(folder, class_names, error, words):
    root, _ = folder
    with pytest.raises(error) as e:
        load_image_folder(root, class_names=class_names)
    msg = str(e.value)
    assert msg.startswith("class_names:") and all(w in msg for w in words), msg


# --- load_image_folder: PIL image modes ---------------------------------------------

def save_image(path: Path, mode: str, size: tuple[int, int], data: bytes, fmt: str = "PNG", **kw) -> Path:
    """Write raw ``data`` (PIL's layout for ``mode``) as an image file; check the file reads back in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes(mode, size, data).save(path, format=fmt, **kw)
    return path


def load_one(path: Path) -> np.ndarray:
    """The single image of a one-class folder, through load_image_folder."""
    ds = load_image_folder(path.parent.parent)
    assert len(ds) == 1 and ds.images.dtype == np.uint8
    return ds.images[0]


def file_mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1)


GRAY16 = np.array([[0, 1, 255, 256], [257 * 7, 32767, 32768, 40000], [65024, 65279, 65280, 65535]], np.uint16)
GRAY16_TO_8 = np.array([[0, 0, 0, 1], [7, 127, 128, 156], [254, 254, 255, 255]], np.uint8)  # v >> 8


def test_gray16_expected_values_are_the_high_byte():
    np.testing.assert_array_equal(GRAY16_TO_8, GRAY16 >> 8)


@pytest.mark.parametrize("mode, fmt, dtype, loaded_mode", [
    ("I;16", "PNG", "<u2", "I;16"),   # the bug report: every pixel came out 255
    ("I;16B", "PNG", ">u2", "I;16"),  # PNG stores big-endian; Pillow reads it back as I;16
    ("I;16B", "TIFF", ">u2", "I;16B"),
    ("I;16", "PPM", "<u2", "I"),      # a 16-bit PGM reads back as mode I (maxval 65535)
])
def test_image_folder_16bit_gray_keeps_the_high_byte(tmp_path, mode, fmt, dtype, loaded_mode):
    path = save_image(tmp_path / "r" / "a" / f"g16.{fmt.lower()}", mode, (4, 3), GRAY16.astype(dtype).tobytes(), fmt)
    assert file_mode(path) == loaded_mode
    np.testing.assert_array_equal(load_one(path), gray_rgb(GRAY16_TO_8))


def test_image_folder_refuses_32bit_int_and_float(tmp_path):
    i32 = save_image(tmp_path / "i" / "a" / "i32.tif", "I", (3, 1), np.array([0, 70000, 2**31 - 1], "<i4").tobytes(),
                     "TIFF")
    f32 = save_image(tmp_path / "f" / "a" / "f32.tif", "F", (3, 1), np.array([0, 0.5, 1], "<f4").tobytes(), "TIFF")
    assert file_mode(i32) == "I" and file_mode(f32) == "F"
    for path, words in [(i32, ["'I'", "32-bit integer"]), (f32, ["'F'", "floating-point"])]:
        with pytest.raises(ValueError) as e:
            load_one(path)
        msg = str(e.value)
        assert str(path) in msg and all(w in msg for w in words) and "8-bit" in msg, msg


def test_image_folder_refuses_lab(tmp_path):
    path = save_image(tmp_path / "r" / "a" / "lab.tif", "LAB", (1, 1), bytes([255, 128, 128]), "TIFF")
    assert file_mode(path) == "LAB"
    with pytest.raises(ValueError, match="'LAB'") as e:
        load_one(path)
    assert str(path) in str(e.value)


PALETTE = [10, 20, 30, 40, 50, 60, 70, 80, 90, 250, 0, 5]
INDICES = np.array([[0, 1, 2], [3, 1, 0]], np.uint8)
PALETTE_RGB = np.array(PALETTE, np.uint8).reshape(-1, 3)[INDICES]


@pytest.mark.parametrize("transparency", [None, 1, bytes([255, 0, 128, 255])], ids=["opaque", "index", "alphas"])
def test_image_folder_palette_keeps_palette_colours(tmp_path, transparency):
    path = tmp_path / "r" / "a" / "p.png"
    path.parent.mkdir(parents=True)
    im = Image.frombytes("P", (3, 2), INDICES.tobytes())
    im.putpalette(PALETTE)
    im.save(path, **({} if transparency is None else {"transparency": transparency}))
    with Image.open(path) as check:
        assert check.mode == "P" and ("transparency" in check.info) == (transparency is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when P with transparency goes straight to RGB
        np.testing.assert_array_equal(load_one(path), PALETTE_RGB)  # alpha dropped, colours kept


def test_image_folder_gray_alpha_drops_alpha(tmp_path):
    la = np.array([[[0, 0], [90, 255], [200, 17]]], np.uint8)  # (H=1, W=3, L+A): a transparent pixel too
    path = save_image(tmp_path / "r" / "a" / "la.png", "LA", (3, 1), la.tobytes())
    assert file_mode(path) == "LA"
    np.testing.assert_array_equal(load_one(path), gray_rgb(la[..., 0]))


def test_image_folder_bilevel(tmp_path):
    path = tmp_path / "r" / "a" / "b.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.array([[True, False, True], [False, False, True]])).save(path)
    assert file_mode(path) == "1"
    np.testing.assert_array_equal(load_one(path), gray_rgb([[255, 0, 255], [0, 0, 255]]))


CMYK = np.array([[[0, 0, 0, 0], [255, 255, 255, 255], [0, 0, 0, 255], [255, 0, 0, 0]],
                 [[10, 20, 30, 40], [200, 100, 0, 100], [0, 128, 255, 64], [60, 60, 60, 0]]], np.uint8)


def cmyk_reference(cmyk: np.ndarray) -> np.ndarray:
    """R = 255 * (1 - C/255) * (1 - K/255), rounded; likewise G from M and B from Y."""
    c = cmyk.astype(np.float64)
    return np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)


def test_image_folder_cmyk(tmp_path):
    want = cmyk_reference(CMYK)
    np.testing.assert_array_equal(want[0], [[255, 255, 255], [0, 0, 0], [0, 0, 0], [0, 255, 255]])
    tif = save_image(tmp_path / "t" / "a" / "c.tif", "CMYK", (4, 2), CMYK.tobytes(), "TIFF")
    assert file_mode(tif) == "CMYK"
    np.testing.assert_array_equal(load_one(tif), want)
    # a CMYK JPEG (Adobe, stored inverted); flat 8x8 blocks so the lossy round trip stays close
    blocks = np.kron(CMYK, np.ones((8, 8, 1), np.uint8))
    jpg = save_image(tmp_path / "j" / "a" / "c.jpg", "CMYK", (32, 16), blocks.tobytes(), "JPEG", quality=100)
    assert file_mode(jpg) == "CMYK"
    got = load_one(jpg)[4::8, 4::8].astype(int)  # block centres
    assert np.abs(got - want.astype(int)).max() <= 3


def test_image_folder_ycbcr(tmp_path):
    ycc = np.array([[[0, 128, 128], [255, 128, 128], [128, 128, 128]],
                    [[81, 90, 240], [145, 54, 34], [41, 240, 110]]], np.uint8)  # about red, green, blue
    path = save_image(tmp_path / "r" / "a" / "y.tif", "YCbCr", (3, 2), ycc.tobytes(), "TIFF")
    assert file_mode(path) == "YCbCr"
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))  # JPEG (full-range BT.601) YCbCr
    want = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)], axis=-1)
    want = np.clip(np.round(want), 0, 255)
    got = load_one(path).astype(int)
    assert np.abs(got - want).max() <= 1
    np.testing.assert_array_equal(got[0], [[0, 0, 0], [255, 255, 255], [128, 128, 128]])


def test_image_folder_rgb_and_rgba_exact(tmp_path):
    rgb = make_uint8_images(1, seed=8, size=5)[0]
    alpha = np.arange(25, dtype=np.uint8).reshape(5, 5, 1) * 10  # includes fully transparent (0)
    p1 = save_image(tmp_path / "r" / "a" / "rgb.png", "RGB", (5, 5), rgb.tobytes())
    p2 = save_image(tmp_path / "s" / "a" / "rgba.png", "RGBA", (5, 5), np.concatenate([rgb, alpha], -1).tobytes())
    np.testing.assert_array_equal(load_one(p1), rgb)
    np.testing.assert_array_equal(load_one(p2), rgb)  # alpha dropped, not composited


def test_image_folder_decompression_bomb_is_a_value_error(tmp_path, monkeypatch):
    path = save_image(tmp_path / "r" / "a" / "big.png", "L", (8, 8), bytes(64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 > 2 * 10: Pillow raises DecompressionBombError
    with pytest.raises(ValueError, match="big.png"):
        load_one(path)


# --- pixels -> model input (the network's input spec; the data layer never converts) ---------
#
# ``jaxviz.data.to_model_input`` is gone: a network converts its own input with ``network.to_input``
# (``InputSpec.to_input``); the built-in CNN's is the notebook's ``X.astype('float32') / 255``.


def to_model_input(images, height: int = 32, width: int = 32, channels: int = 3):
    """The default conversion (pixel / 255) of a network taking (height, width, channels) images."""
    return InputSpec(height, width, channels).to_input(images)


def test_to_model_input_values_and_dtype():
    images = np.array([0, 1, 51, 128, 254, 255], np.uint8).reshape(1, 1, 2, 3)
    x = to_model_input(images, 1, 2)
    assert x.dtype == np.float32 and x.shape == images.shape
    want = np.array([0.0, 1 / 255, 0.2, 128 / 255, 254 / 255, 1.0]).reshape(1, 1, 2, 3)
    np.testing.assert_allclose(x, want, rtol=1e-7, atol=0)
    assert x.min() == 0.0 and x.max() == 1.0
    images = make_uint8_images(3, seed=5)
    np.testing.assert_array_equal(to_model_input(images), np.float32(images) / np.float32(255))


def test_pretrained_network_input_is_pixels_over_255():
    """The shipped CNN takes the notebook's input: 32x32x3 pixels / 255, exactly."""
    network = load_pretrained().network
    images = make_uint8_images(3, seed=6)
    assert network.input_spec.shape == (32, 32, 3)
    np.testing.assert_array_equal(network.to_input(images), np.float32(images) / np.float32(255))


def test_to_model_input_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(np.zeros((1, 32, 32, 3), np.int64))
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        to_model_input(np.zeros((1, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match=r"32x32 .* got 64x64 .*resize_images"):
        to_model_input(np.zeros((1, 64, 64, 3), np.uint8))


def test_to_model_input_refuses_floats_and_says_how_to_convert():
    model_input = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)  # already pixel / 255
    with pytest.raises(TypeError) as e:
        to_model_input(model_input, 4, 4)
    msg = str(e.value)
    assert msg.startswith("images: expected uint8 images (N, H, W, C), got float32")
    assert "model input already" in msg and "(x * 255).round().astype(np.uint8)" in msg
    assert "converts them with the network's input spec" in msg
    with pytest.raises(TypeError) as e:  # float pixels 0..255: a different conversion
        to_model_input(np.full((1, 2, 2, 3), 200.0), 2, 2)
    msg = str(e.value)
    assert "float64" in msg and "[200, 200]" in msg and "np.clip(x, 0, 255).round().astype(np.uint8)" in msg
    assert "model input already" not in msg
    with pytest.raises(TypeError, match=r"int64; pass uint8 pixels 0\.\.255"):
        to_model_input(np.zeros((1, 2, 2, 3), np.int64), 2, 2)
    with pytest.raises(TypeError, match="uint8 array .* got list"):  # a nested list is no array of pixels
        to_model_input([[[[0.5, 0.5, 0.5]]]], 1, 1)


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
    with pytest.raises(TypeError, match="images: expected uint8 .* got float32") as e:
        Dataset(np.zeros((3, 2, 2, 3), np.float32), np.zeros(3, np.int64), ("x", "y"))
    assert "(x * 255).round().astype(np.uint8)" in str(e.value)
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


def test_to_grayscale_is_the_bt601_luma_rounded():
    """Values worked out by hand: 0.299 R + 0.587 G + 0.114 B, to the nearest integer."""
    rgb = np.array([[0, 0, 0], [255, 255, 255], [100, 0, 0], [0, 100, 0], [0, 0, 100], [10, 20, 30],
                    [200, 100, 50]], np.uint8).reshape(1, 7, 1, 3)
    want = [0, 255, 30, 59, 11, 18, 124]  # 29.9, 58.7, 11.4, 2.99 + 11.74 + 3.42, 59.8 + 58.7 + 5.7
    gray = to_grayscale(rgb)
    assert gray.dtype == np.uint8 and gray.shape == (1, 7, 1, 1)
    assert gray.reshape(-1).tolist() == want
    with pytest.raises(ValueError, match="images: expected RGB images .* got 1 channels"):
        to_grayscale(gray)
