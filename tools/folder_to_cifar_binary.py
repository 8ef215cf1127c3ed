"""Write an image folder in CIFAR-10's official *binary* layout (for offline machines).

    python tools/folder_to_cifar_binary.py --test-dir DIR/test [--train-dir DIR/train] --out OUT

Creates OUT/cifar-10-batches-bin/ with test_batch.bin (and data_batch_1..5.bin
when --train-dir is given) and batches.meta.txt, so that
``jaxviz evaluate --data cifar10 --data-dir OUT`` reads it. The pixels are
those of the folder (e.g. the JPEG copy of CIFAR-10 in ../shared/data), not
the official archive's, and no official checksum applies.
"""

import argparse
from pathlib import Path

import numpy as np

from jaxviz.data import CIFAR10_CLASSES, load_image_folder


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # HWC -> R, G, B planes
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-dir", required=True)
    parser.add_argument("--train-dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folder = Path(args.out) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    test = load_image_folder(args.test_dir, class_names=CIFAR10_CLASSES)
    (folder / "test_batch.bin").write_bytes(records(test.images, test.labels))
    if args.train_dir:
        train = load_image_folder(args.train_dir, class_names=CIFAR10_CLASSES)
        order = np.random.default_rng(0).permutation(len(train))
        for i, part in enumerate(np.array_split(order, 5), start=1):
            (folder / f"data_batch_{i}.bin").write_bytes(records(train.images[part], train.labels[part]))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
    print(folder)


if __name__ == "__main__":
    main()
