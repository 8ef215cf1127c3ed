"""Build the embedded sample shipped in the package: 100 CIFAR-10 test images per class.

    python tools/make_sample.py --test-dir DIR

DIR is ``test/`` of the extracted ../shared/data/cifar10-jpeg.tar.gz
(``DIR/<class>/NNNN.jpg``). Draws 100 files per class with a fixed seed and
writes ``jaxviz/assets/cifar10_sample.npz`` (images uint8 (1000, 32, 32, 3),
labels, class_names, files).
"""

import argparse
from pathlib import Path

import numpy as np

from jaxviz.data import CIFAR10_CLASSES, load_image_folder

PER_CLASS = 100
SEED = 20261128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-dir", required=True)
    args = parser.parse_args()
    test = load_image_folder(args.test_dir, class_names=CIFAR10_CLASSES)
    files = [f"{c}/{p.name}" for c in CIFAR10_CLASSES for p in sorted((Path(args.test_dir) / c).iterdir())]
    rng = np.random.default_rng(SEED)
    picked = np.concatenate([np.sort(rng.choice(np.flatnonzero(test.labels == c), PER_CLASS, replace=False))
                             for c in range(len(CIFAR10_CLASSES))])
    out = Path(__file__).resolve().parents[1] / "jaxviz" / "assets" / "cifar10_sample.npz"
    np.savez_compressed(out, images=test.images[picked], labels=test.labels[picked],
                        class_names=np.array(CIFAR10_CLASSES), files=np.array(files)[picked])
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
