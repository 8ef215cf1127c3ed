"""Datasets: the in-memory ``Dataset``, the embedded sample, image folders.

Every loader returns a ``Dataset``: uint8 images (N, 32, 32, 3) in HWC/RGB
order, int64 labels (N,) and the class names. ``to_model_input`` is the one
function that turns such images into the model's float input.

The official CIFAR-10 archives are handled in ``jaxviz.cifar10``.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "Dataset",
    "load_image_folder",
    "load_sample",
    "to_model_input",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

SAMPLE_FILE = "cifar10_sample.npz"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images with labels.

    Attributes:
      images: uint8 (N, H, W, 3), RGB, HWC.
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

    def with_classes(self, class_names: Sequence[str]) -> "Dataset":
        """The same images, labels re-indexed into ``class_names`` (e.g. a model's classes).

        Raises:
          ValueError: a class of this dataset is not in ``class_names``.
        """
        class_names = tuple(class_names)
        if class_names == self.class_names:
            return self
        missing = [c for c in self.class_names if c not in class_names]
        if missing:
            raise ValueError(f"class_names: the data has classes {missing} that the model does not know "
                             f"(model classes: {list(class_names)})")
        mapping = np.array([class_names.index(c) for c in self.class_names], np.int64)
        return Dataset(self.images, mapping[self.labels], class_names, self.source)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        """The images at ``indices`` (any order, repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ValueError(f"indices: expected values in [-{len(self)}, {len(self)}), "
                             f"got {idx.min()}..{idx.max()}")
        return Dataset(self.images[idx], self.labels[idx], self.class_names, self.source)


def check_uint8_images(images: np.ndarray, name: str) -> None:
    """Raise unless ``images`` is a uint8 array of shape (N, H, W, 3)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name}: expected a numpy uint8 array (N, H, W, 3), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (N, H, W, 3), got {images.shape}")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images -> the model's float32 input: pixel / 255, in [0, 1].

    This is the notebook's ``X_test.astype('float32') / 255``, so an
    occluder ``fill=0.0`` is black, as in the notebook.

    Args:
      images: uint8 (N, H, W, 3).

    Returns:
      float32 (N, H, W, 3).
    """
    images = np.asarray(images) if not isinstance(images, np.ndarray) else images
    check_uint8_images(images, "images")
    return images.astype(np.float32) / np.float32(255.0)


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
    Files within a class are read in sorted name order. All images must have
    the same size; grayscale and RGBA are converted to RGB.

    Raises:
      FileNotFoundError: ``root`` or a named class directory does not exist.
      ValueError: no images, a file that is not an image, or mixed sizes.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a directory of class folders, got {str(root)!r} (not a directory)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = CIFAR10_CLASSES if sorted(CIFAR10_CLASSES) == found else found
    missing = [c for c in class_names if c not in found]
    if missing:
        raise FileNotFoundError(f"class_names: no folder for {missing} under {str(root)!r} (found {found})")
    if not class_names:
        raise ValueError(f"root: expected class sub-folders under {str(root)!r}, found none")

    images, labels, size = [], [], None
    for label, name in enumerate(class_names):
        for path in sorted((root / name).iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"root: {str(path)!r} is not a readable image ({e})") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise ValueError(
                    f"root: all images must have the same size; {str(path)!r} is "
                    f"{arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}")
            images.append(arr)
            labels.append(label)
    if not images:
        raise ValueError(f"root: no images found under {str(root)!r}")
    return Dataset(np.stack(images), np.asarray(labels), tuple(class_names), source=str(root))
