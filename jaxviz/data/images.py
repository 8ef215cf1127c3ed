"""Datasets: the in-memory ``Dataset``, the embedded sample, image folders.

Every loader returns a ``Dataset``: uint8 images (N, H, W, C) in HWC order
(RGB from the loaders), int64 labels (N,) and the class names. A network's
``InputSpec`` turns such pixels into its float input; the data layer never does.

The official CIFAR-10 archives are handled in ``jaxviz.data.cifar10``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, PathNotFoundError

__all__ = [
    "CIFAR10_CLASSES",
    "LUMA_WEIGHTS",
    "Dataset",
    "load_image_folder",
    "load_sample",
    "to_grayscale",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

SAMPLE_FILE = "cifar10_sample.npz"
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of R, G, B


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images with labels.

    Attributes:
      images: uint8 (N, H, W, C), HWC (RGB from the loaders).
      labels: int64 (N,), indices into ``class_names``.
      class_names: one name per class.
      source: where the data came from (for reports).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self):
        check_uint8_images(self.images, "images")
        labels = np.asarray(self.labels)
        if labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels: expected shape ({self.images.shape[0]},) to match images, got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels: expected values in [0, {len(self.class_names)}), "
                f"got range [{labels.min()}, {labels.max()}]")
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def with_classes(self, class_names: Sequence[str]) -> Dataset:
        """The same images, labels re-indexed into ``class_names`` (e.g. a model's classes).

        Raises:
          ValueError: a class of this dataset is not in ``class_names``.
        """
        class_names = tuple(class_names)
        if class_names == self.class_names:
            return self
        missing = [c for c in self.class_names if c not in class_names]
        if missing:
            raise ArgumentError("class_names", f"the data has classes {missing} that the model does not know "
                             f"(model classes: {list(class_names)})")
        mapping = np.array([class_names.index(c) for c in self.class_names], np.int64)
        return Dataset(self.images, mapping[self.labels], class_names, self.source)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The images at ``indices`` (any order, repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ArgumentError("indices", f"expected values in [-{len(self)}, {len(self)}), "
                             f"got {idx.min()}..{idx.max()}")
        return Dataset(self.images[idx], self.labels[idx], self.class_names, self.source)


def check_uint8_images(images: np.ndarray, name: str) -> None:
    """Raise unless ``images`` is a numpy uint8 array of shape (N, H, W, C).

    Raises:
      TypeError: not a numpy array, or not uint8 (the message says how to convert).
      ValueError: the wrong rank.
    """
    if not isinstance(images, np.ndarray):
        raise ArgumentTypeError(f"{name}", f"expected a numpy uint8 array (N, H, W, C), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ArgumentTypeError(f"{name}", f"expected uint8 images (N, H, W, C), got {images.dtype}{_uint8_hint(images)}")
    if images.ndim != 4 or images.shape[-1] < 1:
        raise ArgumentError(f"{name}", f"expected shape (N, H, W, C), got {images.shape}")


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> uint8 (N, H, W, 1): the ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B``, rounded to the nearest integer (halves to even).

    Raises:
      TypeError / ValueError: not uint8 (N, H, W, C) images, or not 3 channels.
    """
    check_uint8_images(images, "images")
    if images.shape[-1] != 3:
        raise ArgumentError("images", f"expected RGB images (N, H, W, 3), got {images.shape[-1]} channels")
    luma = images.astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def _uint8_hint(images: np.ndarray) -> str:
    """How to turn non-uint8 ``images`` into uint8 pixels (for an error message)."""
    if images.dtype.kind == "f":
        finite = images[np.isfinite(images)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return ("; these look like model input already (floats in [0, 1]) -- jaxviz takes uint8 "
                    "pixels and converts them with the network's input spec: pass "
                    "`(x * 255).round().astype(np.uint8)`")
        rng = f" (values in [{finite.min():g}, {finite.max():g}])" if finite.size else ""
        return f"{rng}; pass uint8 pixels 0..255, e.g. `np.clip(x, 0, 255).round().astype(np.uint8)`"
    if images.dtype.kind in "iu":
        return "; pass uint8 pixels 0..255, e.g. `np.clip(x, 0, 255).astype(np.uint8)`"
    return ""


def load_sample() -> Dataset:
    """The embedded sample: 100 CIFAR-10 test images per class (1,000), no network.

    The images are from the public JPEG copy of CIFAR-10 (one JPEG round trip),
    drawn with a fixed seed; ``source`` records the original file names.
    """
    ref = resources.files("jaxviz") / "assets" / SAMPLE_FILE
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        return Dataset(z["images"], z["labels"], tuple(str(c) for c in z["class_names"]),
                       source="jaxviz embedded sample (CIFAR-10 test, 100 per class)")


def load_image_folder(root: str | os.PathLike, *, class_names: Sequence[str] | None = None) -> Dataset:
    """Load ``root/<class>/*.png|jpg|...`` into a ``Dataset``.

    Classes are the sub-directories of ``root`` in sorted order, unless
    ``class_names`` gives the order (then every name must be a sub-directory;
    CIFAR-10 folders are recognised and put in the official label order).
    Hidden entries (names starting with ".") are ignored. Files within a class
    are read in sorted name order; sub-folders of a class folder are not
    searched. Every class folder must hold at least one image (an empty one is
    refused rather than skipped or kept: either would silently change what the
    labels mean). All images must have the same size.

    Pixels become 8-bit RGB as follows (PIL image modes):

    * 8-bit ``"L"``, bilevel ``"1"`` (0 or 255), palette ``"P"``, ``"RGB"``,
      ``"RGBX"``, ``"YCbCr"``: Pillow's conversion to RGB.
    * ``"CMYK"`` (e.g. a CMYK JPEG or TIFF): the plain formula
      ``R = round((255 - C) * (255 - K) / 255)`` (likewise G from M, B from Y);
      embedded ICC profiles are ignored.
    * 16-bit grayscale (``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"``, and
      ``"I"`` when the file holds 16 bits per sample: PNG, PGM/PPM, 16-bit
      TIFF): the high byte, ``v >> 8`` (65535 -> 255, ``257 * k`` -> ``k``), the
      same rule by which Pillow reads 16-bit RGB PNGs.
    * Alpha (``"RGBA"``, ``"LA"``, ``"PA"``, ``"P"`` with transparency, and the
      premultiplied ``"RGBa"``/``"La"``): dropped. The stored (straight) colours
      are kept, not composited on any background, as ``convert("RGB")`` does.
    * Refused with a ``ValueError`` naming the file and the mode: 32-bit float
      ``"F"`` (no standard 8-bit scale), 32-bit integer ``"I"`` (e.g. a 32-bit
      TIFF), ``"LAB"`` (Pillow's conversion to RGB is not reliable), and any
      other mode.

    Multi-frame files (GIF, TIFF) contribute their first frame.

    Raises:
      FileNotFoundError: ``root`` does not exist or is a file, or a named class
        directory does not exist.
      TypeError: ``class_names`` is not a sequence of strings.
      ValueError: no class folders, an empty class folder, a file that is not
        a readable image, an unsupported image mode, or mixed sizes.
    """
    root = Path(root)
    if not root.exists():
        raise PathNotFoundError(f"root: expected a directory of class folders, got {str(root)!r} (does not exist)")
    if not root.is_dir():
        raise FileNotFoundError(
            f"root: expected a directory of class folders (root/<class>/<image>), got {str(root)!r}, "
            f"which is a file; pass the folder that holds the class folders")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    discovered = class_names is None
    if discovered:
        class_names = CIFAR10_CLASSES if sorted(CIFAR10_CLASSES) == found else tuple(found)
        if not class_names:
            stray = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
            hint = (f" but {len(stray)} file(s), e.g. {stray[0]!r}; expected root/<class>/<image>: "
                    f"was this a class folder rather than the folder above it?" if stray else "")
            raise ArgumentError("root", f"expected class sub-folders under {str(root)!r}, found none{hint}")
    else:
        class_names = _check_class_names(class_names)
        missing = [c for c in class_names if c not in found]
        if missing:
            raise PathNotFoundError(f"class_names: no folder for {missing} under {str(root)!r} (found {found})")

    files = []
    for name in class_names:
        folder = root / name
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        if not entries:
            if discovered:
                raise ValueError(
                    f"root: class folder {str(folder)!r} has no images; add images to it or remove it "
                    f"(every sub-folder of {str(root)!r} is a class, and an empty one would be a class "
                    f"without images that shifts the labels of the classes after it)")
            raise ArgumentError("class_names", f"the folder of class {name!r}, {str(folder)!r}, has no images; "
                             f"add images to it or leave {name!r} out of class_names")
        files.append(entries)

    images, labels, size = [], [], None
    for label, entries in enumerate(files):
        for path in entries:
            arr = _read_rgb(path)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise ValueError(
                    f"root: all images must have the same size; {str(path)!r} is "
                    f"{arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}")
            images.append(arr)
            labels.append(label)
    return Dataset(np.stack(images), np.asarray(labels), tuple(class_names), source=str(root))


def _check_class_names(class_names) -> tuple[str, ...]:
    if isinstance(class_names, (str, bytes)):
        raise ArgumentTypeError("class_names", f"expected a sequence of folder names, got the single string {class_names!r}")
    try:
        names = tuple(class_names)
    except TypeError:
        raise ArgumentTypeError("class_names", f"expected a sequence of folder names, "
                        f"got {type(class_names).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ArgumentTypeError("class_names", f"expected folder names (str), got {bad[0]!r} ({type(bad[0]).__name__})")
    if not names:
        raise ArgumentError("class_names", "expected at least one class name, got none")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ArgumentError("class_names", f"expected distinct names, got {duplicates} more than once")
    return names


class _UnsupportedImage(ValueError):
    """An image whose pixel format jaxviz refuses to guess a conversion for."""


_RGB_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "YCbCr"})  # Pillow converts these faithfully
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _read_rgb(path: Path) -> np.ndarray:
    """One image file -> uint8 (H, W, 3), by the rules in ``load_image_folder``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _pixels_to_rgb(im, path)
    except _UnsupportedImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        # OSError includes UnidentifiedImageError and truncated files
        raise ArgumentError("root", f"{str(path)!r} is not a readable image ({e})") from None


def _pixels_to_rgb(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode == "CMYK":
        cmyk = np.asarray(im, dtype=np.uint32)
        rgb = ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) + 127) // 255  # round(x / 255)
        return rgb.astype(np.uint8)
    if mode in _GRAY16_MODES or mode == "I":
        gray = np.asarray(im)  # uint16 in the file's byte order, or int32 for "I"
        if mode == "I":
            bits = _bits_per_sample(im)
            if bits != 16:
                depth = f"{bits}-bit" if bits else "32-bit (or of unknown depth)"
                raise _UnsupportedImage(
                    f"root: {str(path)!r} has {depth} integer pixels (PIL mode 'I'), which have no "
                    f"standard 8-bit scale; save it as 8-bit (or 16-bit) grayscale or RGB")
            if gray.size and (gray.min() < 0 or gray.max() > 65535):
                raise _UnsupportedImage(
                    f"root: {str(path)!r} is a 16-bit image (PIL mode 'I') with values in "
                    f"[{gray.min()}, {gray.max()}], outside 0..65535")
        gray8 = (gray.astype(np.uint32) >> 8).astype(np.uint8)  # the high byte, as Pillow does for RGB
        return np.repeat(gray8[..., None], 3, axis=-1)
    if mode == "F":
        raise _UnsupportedImage(
            f"root: {str(path)!r} has 32-bit floating-point pixels (PIL mode 'F'), which have no standard "
            f"8-bit scale; save it as 8-bit (or 16-bit) grayscale or RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        if mode == "La":  # premultiplied: Pillow goes La -> LA -> RGBA only
            im = im.convert("LA")
        return np.ascontiguousarray(np.asarray(im.convert("RGBA"))[..., :3])  # alpha dropped
    if mode in _RGB_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise _UnsupportedImage(
        f"root: {str(path)!r} has PIL mode {mode!r}, which jaxviz does not convert to RGB "
        f"(supported: {', '.join(sorted(_RGB_MODES | _ALPHA_MODES | _GRAY16_MODES | {'CMYK', 'I'}))}); "
        f"save it as 8-bit RGB")


def _bits_per_sample(im) -> int | None:
    """Bits per sample of a mode "I" image's file: 16 for PNG and PGM/PPM, the tag for TIFF, else None."""
    if im.format in ("PNG", "PPM"):  # at most 16 bits per sample; Pillow scales PGM/PPM to 0..65535
        return 16
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        return int(bits) if isinstance(bits, int) else None
    return None
