"""Train the shipped CIFAR-10 weights and record the recipe, wall time and accuracy.

    python -m benchmarks.train_pretrained --data-root DIR [--checkpoint-dir CKPT]

DIR holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the layout of
../shared/data/cifar10-jpeg.tar.gz once extracted). The run resumes from
CKPT if it was interrupted. At the end it writes the weights to
``jaxviz/assets/cifar10_cnn.msgpack`` (and its manifest) and the record to
``benchmarks/results/pretrained_training.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import jaxviz
from benchmarks._env import environment
from jaxviz.data import load_image_folder
from jaxviz.models.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--checkpoint-dir", default=str(Path.home() / ".cache" / "jaxviz" / "pretrain-ckpt"))
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = parser.parse_args()

    t0 = time.perf_counter()
    train_set = load_image_folder(Path(args.data_root) / "train")
    test_set = load_image_folder(Path(args.data_root) / "test")
    load_seconds = time.perf_counter() - t0
    config = TrainConfig(epochs=args.epochs)
    result = train(config, train_set, test_set, checkpoint_dir=args.checkpoint_dir)

    network = jaxviz.from_cnn(result.model, result.variables)
    logits = jaxviz.layer_features(network, test_set.images)
    accuracy = float(np.mean(np.argmax(logits, -1) == test_set.labels))
    sample = jaxviz.load_sample() if (ROOT / "jaxviz" / "assets" / "cifar10_sample.npz").exists() else None
    sample_accuracy = None
    if sample is not None:
        sample_logits = jaxviz.layer_features(network, sample.images)
        sample_accuracy = float(np.mean(np.argmax(sample_logits, -1) == sample.labels))

    metadata = {
        "dataset": "CIFAR-10 (public JPEG copy, one JPEG round trip), official train/test split",
        "test_accuracy": accuracy,
        "sample_accuracy": sample_accuracy,
        "train_config": dataclasses.asdict(config),
    }
    jaxviz.save_weights(ROOT / "jaxviz" / "assets" / jaxviz.PRETRAINED_FILE, result.model, result.variables,
                        metadata=metadata)
    record = {
        "claim": "the shipped CNN reaches >= 85% test accuracy on the 10,000 CIFAR-10 test images",
        "test_accuracy": accuracy,
        "test_images": len(test_set),
        "sample_accuracy": sample_accuracy,
        "train_images": len(train_set),
        "train_config": dataclasses.asdict(config),
        "history": result.history,
        "train_wall_seconds": float(sum(h["seconds"] for h in result.history)),
        "data_load_seconds": load_seconds,
        "weights_sha256": jaxviz.pretrained_sha256(),
        "environment": environment(),
        "command": "python -m benchmarks.train_pretrained --data-root DIR",
    }
    out = ROOT / "benchmarks" / "results" / "pretrained_training.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("test_accuracy", "sample_accuracy", "train_wall_seconds")}))


if __name__ == "__main__":
    main()
