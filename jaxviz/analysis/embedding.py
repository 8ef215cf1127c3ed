"""t-SNE of layer features, and how well classes separate in it.

Uses scikit-learn's ``TSNE`` with its current parameter names (``max_iter``,
not the notebook's removed ``n_iter``), PCA initialisation and a fixed seed.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxviz.checks import ArgumentError

__all__ = ["Embedding", "knn_agreement", "tsne"]


@dataclasses.dataclass(frozen=True)
class Embedding:
    """A 2-D embedding of (a subsample of) a dataset's features.

    Attributes:
      coords: float32 (M, 2).
      indices: int64 (M,): dataset index of each point.
      seconds: wall time of the t-SNE fit.
      settings: the parameters used.
    """

    coords: np.ndarray
    indices: np.ndarray
    seconds: float
    settings: dict


def tsne(features: np.ndarray, *, perplexity: float = 30.0, max_iter: int = 1000, seed: int = 0,
         subsample: int | None = None) -> Embedding:
    """t-SNE of ``features`` (N, ...) flattened to (N, D).

    Args:
      features: float (N, ...).
      perplexity: must be < the number of points.
      max_iter: optimisation iterations (scikit-learn requires >= 250; its
        first 250 are early exaggeration, so use a few hundred more).
      seed: for the subsample and the t-SNE.
      subsample: embed this many points drawn without replacement (sorted
        indices), or all when ``None`` or >= N.

    Returns:
      ``Embedding``.
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features, np.float32)
    n = len(features)
    if n < 2:
        raise ArgumentError("features", f"expected at least 2 points for t-SNE, got {n}")
    if max_iter < 250:
        raise ArgumentError("max_iter", f"scikit-learn's TSNE needs >= 250, got {max_iter}")
    indices = np.arange(n)
    if subsample is not None:
        if subsample < 2:
            raise ArgumentError("subsample", f"expected >= 2 points or None, got {subsample}")
        if subsample < n:
            indices = np.sort(np.random.default_rng(seed).choice(n, subsample, replace=False))
    if not 0 < perplexity < len(indices):
        raise ArgumentError("perplexity", f"expected a value in (0, {len(indices)}) (the number of points), "
                         f"got {perplexity}")
    x = features[indices].reshape(len(indices), -1)
    settings = {"perplexity": perplexity, "max_iter": max_iter, "seed": seed, "init": "pca",
                "points": int(len(indices))}
    start = time.perf_counter()
    coords = TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca",
                  random_state=seed).fit_transform(x)
    return Embedding(coords.astype(np.float32), indices.astype(np.int64), time.perf_counter() - start, settings)


def knn_agreement(coords: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 10) -> np.ndarray:
    """Per class, the mean share of each point's ``k`` nearest neighbours
    (excluding itself) that have the same label: how well the class forms
    its own cluster in the embedding.

    Returns:
      float64 (classes,); NaN for a class with no points.
    """
    from sklearn.neighbors import NearestNeighbors

    coords, labels = np.asarray(coords), np.asarray(labels)
    if len(coords) != len(labels):
        raise ArgumentError("labels", f"expected {len(coords)} labels (one per point), got {len(labels)}")
    if not 1 <= k < len(coords):
        raise ArgumentError("k", f"expected 1 <= k < {len(coords)} (the number of points), got {k}")
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)
    same = (labels[neighbours[:, 1:]] == labels[:, None]).mean(1)
    return np.array([same[labels == c].mean() if np.any(labels == c) else np.nan for c in range(num_classes)])
