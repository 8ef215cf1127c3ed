"""Data: uint8 image datasets (image folders, the embedded sample, CIFAR-10 archives)."""

from jaxviz.data.cifar10 import cache_dir, load_cifar10
from jaxviz.data.images import CIFAR10_CLASSES, LUMA_WEIGHTS, Dataset, load_image_folder, load_sample, to_grayscale

__all__ = ["CIFAR10_CLASSES", "LUMA_WEIGHTS", "Dataset", "cache_dir", "load_cifar10", "load_image_folder",
           "load_sample", "to_grayscale"]
