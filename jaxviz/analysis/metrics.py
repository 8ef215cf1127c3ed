"""Accuracy, per-class accuracy, confusion matrix and the most confused classes.

The notebook asks "What categories seem easier for our model? Which ones are
confusing?": ``classification_report`` answers with numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxviz.checks import ArgumentError

__all__ = ["ClassificationReport", "ConfusedPair", "classification_report", "confusion_matrix", "most_confused_pairs"]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (classes, classes): row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ArgumentError("predictions", f"expected shape {labels.shape} like labels, got {predictions.shape}")
    for name, arr in (("labels", labels), ("predictions", predictions)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ArgumentError(f"{name}", f"expected values in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


@dataclasses.dataclass(frozen=True)
class ConfusedPair:
    """Two classes mistaken for each other.

    Attributes:
      a, b: the class names (a before b in class order).
      count: images of a predicted as b plus images of b predicted as a.
      a_as_b, b_as_a: the two directions.
      rate: count over the images of both classes.
    """

    a: str
    b: str
    count: int
    a_as_b: int
    b_as_a: int
    rate: float


def most_confused_pairs(cm: np.ndarray, class_names: tuple[str, ...], *, top: int = 5) -> list[ConfusedPair]:
    """The class pairs most often mistaken for each other, both directions summed.

    Returns:
      Up to ``top`` ``ConfusedPair``s, by count descending (ties: by names);
      pairs never confused are left out.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or len(class_names) != cm.shape[0]:
        raise ArgumentError("class_names", f"expected {cm.shape[0] if cm.ndim else 0} names for a square confusion "
                         f"matrix of shape {cm.shape}, got {len(class_names)}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ArgumentError("top", f"expected a positive int, got {top!r}")
    pairs = []
    for a in range(len(cm)):
        for b in range(a + 1, len(cm)):
            count = int(cm[a, b] + cm[b, a])
            if count:
                total = int(cm[a].sum() + cm[b].sum())
                pairs.append(ConfusedPair(class_names[a], class_names[b], count, int(cm[a, b]), int(cm[b, a]),
                                          count / max(total, 1)))
    pairs.sort(key=lambda p: (-p.count, p.a, p.b))
    return pairs[:top]


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """How well a classifier does on labelled images.

    Attributes:
      images: how many images.
      accuracy: share of images whose top output is their label.
      class_names: one per class.
      per_class_accuracy: class name -> accuracy on that class's images (NaN for a class with none).
      easiest, hardest: the three best and worst classes by accuracy, among those with images.
      confusion_matrix: int64 (classes, classes), rows true, columns predicted.
      most_confused: the ``ConfusedPair``s most often mistaken for each other.
    """

    images: int
    accuracy: float
    class_names: tuple[str, ...]
    per_class_accuracy: dict
    easiest: tuple[str, ...]
    hardest: tuple[str, ...]
    confusion_matrix: np.ndarray
    most_confused: list


def classification_report(labels: np.ndarray, logits: np.ndarray, class_names: tuple[str, ...]) -> ClassificationReport:
    """Overall and per-class accuracy, confusion matrix, most confused pairs.

    Args:
      labels: int (N,).
      logits: float (N, classes): any scores whose argmax is the prediction.
      class_names: one per class.

    Returns:
      ``ClassificationReport``.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ArgumentError("logits", f"expected shape (N, {len(class_names)}), got {logits.shape}")
    predictions = logits.argmax(1)
    cm = confusion_matrix(labels, predictions, len(class_names))
    present = cm.sum(1) > 0
    per_class = np.where(present, cm.diagonal() / np.maximum(cm.sum(1), 1), np.nan)
    shown = np.flatnonzero(present)  # easiest / hardest among the classes that have images
    order = shown[np.argsort(-per_class[shown], kind="stable")]
    return ClassificationReport(
        images=int(len(labels)),
        accuracy=float(np.mean(predictions == np.asarray(labels))),
        class_names=tuple(class_names),
        per_class_accuracy={name: float(a) for name, a in zip(class_names, per_class)},
        easiest=tuple(class_names[i] for i in order[:3]),
        hardest=tuple(class_names[i] for i in order[::-1][:3]),
        confusion_matrix=cm,
        most_confused=most_confused_pairs(cm, tuple(class_names)),
    )
