"""Accuracy, per-class accuracy, confusion matrix and the most confused classes.

The notebook asks "What categories seem easier for our model? Which ones are
confusing?": ``classification_report`` answers with numbers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["classification_report", "confusion_matrix", "most_confused_pairs"]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (classes, classes): row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"predictions: expected shape {labels.shape} like labels, got {predictions.shape}")
    for name, arr in (("labels", labels), ("predictions", predictions)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name}: expected values in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def most_confused_pairs(cm: np.ndarray, class_names: tuple[str, ...], *, top: int = 5) -> list[dict]:
    """The class pairs most often mistaken for each other, both directions summed.

    Returns:
      Up to ``top`` dicts ``{"a", "b", "count", "a_as_b", "b_as_a", "rate"}``
      where ``rate`` is count over the images of both classes; descending.
    """
    cm = np.asarray(cm)
    pairs = []
    for a in range(len(cm)):
        for b in range(a + 1, len(cm)):
            count = int(cm[a, b] + cm[b, a])
            if count:
                total = int(cm[a].sum() + cm[b].sum())
                pairs.append({"a": class_names[a], "b": class_names[b], "count": count,
                              "a_as_b": int(cm[a, b]), "b_as_a": int(cm[b, a]), "rate": count / max(total, 1)})
    pairs.sort(key=lambda p: (-p["count"], p["a"], p["b"]))
    return pairs[:top]


def classification_report(labels: np.ndarray, logits: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Overall and per-class accuracy, confusion matrix, most confused pairs.

    Args:
      labels: int (N,).
      logits: float (N, classes).
      class_names: one per class.

    Returns:
      JSON-ready dict: ``accuracy``, ``per_class_accuracy`` (name -> float),
      ``confusion_matrix`` (list of rows), ``most_confused``, ``class_names``,
      ``images``, and ``easiest``/``hardest`` class names.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(f"logits: expected shape (N, {len(class_names)}), got {logits.shape}")
    predictions = logits.argmax(1)
    cm = confusion_matrix(labels, predictions, len(class_names))
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    order = np.argsort(-per_class, kind="stable")
    return {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predictions == np.asarray(labels))),
        "class_names": list(class_names),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "easiest": [class_names[i] for i in order[:3]],
        "hardest": [class_names[i] for i in order[::-1][:3]],
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused_pairs(cm, tuple(class_names)),
    }
