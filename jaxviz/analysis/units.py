"""Unit selectivity: numbers for the notebook's questions about units.

"Do all units respond to distinguishable concepts? Are there units that
respond to similar things? Did you find any units with semantic meaning?"

* ``unit_selectivity``: the class histogram of each unit's top-K images, the
  share of the majority class (1.0: all K images of one class; 1/classes:
  uniform), and the normalized entropy of the histogram.
* ``similar_units``: unit pairs whose top-K sets overlap (Jaccard index) or
  whose activations over the whole dataset are highly correlated (Pearson).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxviz.analysis.topk import TopK, top_k_images
from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.engine.inputs import unit_indices

__all__ = ["ClassSelectivity", "Selectivity", "class_selectivity", "selectivity_of_means", "SimilarUnits", "UnitPair", "UnitStudy", "active_in_top_k", "pick_units", "similar_units", "study_units",
           "unit_selectivity"]


@dataclasses.dataclass(frozen=True)
class Selectivity:
    """Per-unit class statistics of the top-K images.

    Attributes:
      histogram: int64 (units, classes): class counts among each unit's top K.
      majority_class: int64 (units,).
      score: float64 (units,): majority share, in [1/classes, 1].
      entropy: float64 (units,): histogram entropy / log(classes), in [0, 1].
    """

    histogram: np.ndarray
    majority_class: np.ndarray
    score: np.ndarray
    entropy: np.ndarray

    def ranking(self) -> np.ndarray:
        """Units from most to least selective (score descending, then entropy
        ascending, then unit index)."""
        units = np.arange(len(self.score))
        return np.lexsort((units, self.entropy, -self.score))


def check_count(value, name: str) -> int:
    """Raise unless ``value`` is a positive int (not a bool); return it as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name}", f"expected a positive int, got {value!r}")
    if value < 1:
        raise ArgumentError(f"{name}", f"expected a positive int, got {value}")
    return int(value)


def active_in_top_k(top_indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """bool (K, units): whether each unit is active (above its minimum over the
    dataset) on each of its top-K images. A unit active on fewer than K images
    fills the remaining slots with ties in index order, which say nothing."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != top_indices.shape[1]:
        raise ArgumentError("scores", f"expected shape (N, {top_indices.shape[1]}), got {scores.shape}")
    return scores[top_indices, np.arange(top_indices.shape[1])] > scores.min(0)


def unit_selectivity(top_indices: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     scores: np.ndarray | None = None) -> Selectivity:
    """Selectivity of every unit from its top-K images.

    Args:
      top_indices: int (K, units), dataset indices (``TopK.indices``).
      labels: int (N,), class of each dataset image.
      num_classes: number of classes (>= 2).
      scores: optional float (N, units), the scores the top K came from; when
        given, only top-K images the unit is active on are counted (see
        ``active_in_top_k``), so a dead unit scores 0 and a unit active on
        3 images of one class scores 0.3 at K = 10.

    Returns:
      ``Selectivity``: score = majority-class count / K; majority ties go to
      the lower class index.
    """
    top_indices = np.asarray(top_indices)
    labels = np.asarray(labels)
    if top_indices.ndim != 2:
        raise ArgumentError("top_indices", f"expected shape (K, units), got {top_indices.shape}")
    if num_classes < 2:
        raise ArgumentError("num_classes", f"expected >= 2, got {num_classes}")
    if top_indices.size and top_indices.max() >= len(labels):
        raise ArgumentError("top_indices", f"index {top_indices.max()} out of range for {len(labels)} labels")
    k, units = top_indices.shape
    counted = np.ones(top_indices.shape, bool) if scores is None else active_in_top_k(top_indices, scores)
    classes = labels[top_indices]  # (K, units)
    histogram = np.zeros((units, num_classes), np.int64)
    np.add.at(histogram, (np.broadcast_to(np.arange(units), (k, units))[counted], classes[counted]), 1)
    share = histogram / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(share > 0, share * np.log(share), 0.0).sum(1) / np.log(num_classes)
    return Selectivity(histogram, histogram.argmax(1), share.max(1), entropy)


@dataclasses.dataclass(frozen=True)
class ClassSelectivity:
    """Class selectivity of every unit over a whole dataset (Morcos et al., ICLR 2018).

    Attributes:
      class_means: float64 (classes, units): each class's mean activation of each unit (NaN for a class without
        images, which the index leaves out).
      preferred_class: int64 (units,): the class with the largest mean (ties to the lower index).
      index: float64 (units,): ``(mu_max - mu_rest) / (mu_max + mu_rest)``, ``mu_max`` the preferred class's
        mean and ``mu_rest`` the mean of the other classes' means; in [0, 1] for non-negative (ReLU)
        activations, 1 when only one class activates the unit, 0 when every class does equally; NaN when the
        denominator is 0 (a unit never active). Unlike the top-K majority share it does not saturate: two
        units whose top 10 are all of one class still differ in how much the other classes activate them.
    """

    class_means: np.ndarray
    preferred_class: np.ndarray
    index: np.ndarray

    def ranking(self) -> np.ndarray:
        """Units from most to least class-selective: the index descending; ties (e.g. 1.0, one class alone
        activates the unit) broken by the larger mean of the preferred class, then the unit number; units
        without an index (never active) last."""
        units = np.arange(self.index.shape[0])
        preferred_mean = self.class_means[self.preferred_class, units]
        missing = ~np.isfinite(self.index)
        return np.lexsort((units, -np.nan_to_num(preferred_mean), -np.nan_to_num(self.index, nan=-np.inf), missing))


def class_selectivity(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> ClassSelectivity:
    """The class selectivity index of every unit from its scores over a whole dataset.

    Args:
      scores: float (N, units), e.g. ``unit_scores(layer_features(...))``.
      labels: int (N,) classes in [0, num_classes); every class needs at least one image.
      num_classes: number of classes (>= 2).
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ArgumentError("scores", f"expected shape (N, units), got {scores.shape}")
    if num_classes < 2:
        raise ArgumentError("num_classes", f"expected >= 2, got {num_classes}")
    if labels.shape != (len(scores),):
        raise ArgumentError("labels", f"expected shape ({len(scores)},), got {labels.shape}")
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes or (counts > 0).sum() < 2:
        raise ArgumentError("labels", f"expected classes in [0, {num_classes}), at least two of them with images, got "
                                      f"counts {counts.tolist()}")
    sums = np.zeros((num_classes, scores.shape[1]))
    np.add.at(sums, labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        return selectivity_of_means(sums / counts[:, None])  # NaN rows: classes without images


def selectivity_of_means(class_means: np.ndarray) -> ClassSelectivity:
    """``ClassSelectivity`` from class-conditional means, float (classes, units) (e.g. sums streamed over a
    dataset, divided by the class counts), NaN rows for classes without images: the one place of the index's
    formula, which compares the classes that have images (at least two)."""
    means = np.asarray(class_means, np.float64)
    present = np.flatnonzero(np.isfinite(means).all(1)) if means.ndim == 2 else []
    if means.ndim != 2 or len(present) < 2:
        raise ArgumentError("class_means", f"expected shape (classes, units) with at least two classes of finite "
                                           f"means, got shape {means.shape}")
    seen = means[present]
    preferred = present[seen.argmax(0)]
    top = seen.max(0)
    rest = (seen.sum(0) - top) / (len(present) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        index = np.where(top + rest != 0, (top - rest) / (top + rest), np.nan)
    return ClassSelectivity(means, preferred, index)


@dataclasses.dataclass(frozen=True)
class UnitPair:
    """Two units that respond to similar things."""

    a: int
    b: int
    jaccard: float  # overlap of the two top-K sets, |A & B| / |A | B|
    correlation: float  # Pearson correlation of the activations over the dataset


@dataclasses.dataclass(frozen=True)
class SimilarUnits:
    """Unit pairs that respond to similar things, by two criteria.

    Attributes:
      overlap: ``UnitPair``s with the most overlapping top-K sets (Jaccard, descending).
      correlated: ``UnitPair``s with the most correlated activations (Pearson, descending).
    """

    overlap: list
    correlated: list

    @property
    def pairs(self) -> list:
        """Each unordered pair of ``overlap`` and ``correlated`` once: the overlap pairs, then the correlated
        pairs not among them (a pair can head both lists; a table of both lists showed it twice)."""
        seen, pairs = set(), []
        for p in self.overlap + self.correlated:
            key = (min(p.a, p.b), max(p.a, p.b))
            if key not in seen:
                seen.add(key)
                pairs.append(p)
        return pairs


def similar_units(top_indices: np.ndarray, scores: np.ndarray, *, top: int = 10) -> SimilarUnits:
    """The unit pairs with the most overlapping top-K sets and the most correlated activations.

    Args:
      top_indices: int (K, units).
      scores: float (N, units), the activations the top K came from.
      top: pairs to return in each list.

    Returns:
      ``SimilarUnits`` with ``overlap`` and ``correlated``, each a list of ``UnitPair``
      sorted by its own criterion (descending; ties by unit indices). A
      unit's top-K set holds only the images it is active on (above its
      minimum over the dataset), so dead units overlap with nothing and
      have correlation 0.
    """
    check_count(top, "top")
    top_indices = np.asarray(top_indices)
    scores = np.asarray(scores, np.float64)
    k, units = top_indices.shape
    active = active_in_top_k(top_indices, scores)
    membership = np.zeros((units, scores.shape[0]), np.float64)
    membership[np.broadcast_to(np.arange(units), (k, units))[active], top_indices[active]] = 1.0
    inter = membership @ membership.T
    sizes = membership.sum(1)
    jaccard = inter / np.maximum(sizes[:, None] + sizes[None, :] - inter, 1)
    centred = scores - scores.mean(0)
    norms = np.linalg.norm(centred, axis=0)
    live = norms > 1e-12
    corr = np.zeros((units, units))
    corr[np.ix_(live, live)] = (centred[:, live].T @ centred[:, live]) / np.outer(norms[live], norms[live])
    a, b = np.triu_indices(units, 1)

    def best(values: np.ndarray) -> list[UnitPair]:
        order = np.lexsort((b, a, -values[a, b]))[:top]
        return [UnitPair(int(a[i]), int(b[i]), float(jaccard[a[i], b[i]]), float(corr[a[i], b[i]])) for i in order]

    return SimilarUnits(best(jaccard), best(corr))


def pick_units(selectivity: Selectivity, count: int, *, alive: np.ndarray | None = None) -> list[int]:
    """``count`` units to show when the user names none: the most selective
    ones, at most one per majority class first, so the picture covers
    several concepts; ``alive`` (bool (units,)) excludes dead units.

    Returns at most ``count`` units (fewer when fewer are alive).

    Raises:
      ValueError: ``count`` is not a positive int; ``alive`` has the wrong shape.
    """
    check_count(count, "count")
    if alive is not None and np.shape(alive) != np.shape(selectivity.score):
        raise ArgumentError("alive", f"expected a bool array of shape {np.shape(selectivity.score)}, "
                         f"got shape {np.shape(alive)}")
    ranking = [int(u) for u in selectivity.ranking() if alive is None or alive[u]]
    picked, seen = [], set()
    for u in ranking:
        if selectivity.majority_class[u] not in seen:
            picked.append(u)
            seen.add(selectivity.majority_class[u])
        if len(picked) == count:
            return picked
    return picked + [u for u in ranking if u not in picked][: count - len(picked)]


@dataclasses.dataclass(frozen=True)
class UnitStudy:
    """The notebook's unit study of one layer: top-K images, selectivity, the units to show.

    Attributes:
      scores: float32 (N, units): one score per image and unit (``unit_scores``).
      top: ``TopK`` with (K, units) dataset indices and scores.
      selectivity: ``Selectivity`` counting only top-K images a unit is active on.
      alive: bool (units,): units active (score > 0) on at least one image.
      units: the units to show: given by the caller or picked by ``pick_units``.
    """

    scores: np.ndarray
    top: TopK
    selectivity: Selectivity
    alive: np.ndarray
    units: tuple[int, ...]

    @property
    def k(self) -> int:
        return int(self.top.indices.shape[0])

    def shown_indices(self) -> np.ndarray:
        """int64 (len(units) * K,): dataset indices of the shown units' top images, unit-major
        (unit 0's K images best first, then unit 1's, ...)."""
        return self.top.indices[:, list(self.units)].T.reshape(-1)

    def shown_owner(self) -> np.ndarray:
        """int64 (len(units) * K,): for each of ``shown_indices``, its position in ``units``."""
        return np.repeat(np.arange(len(self.units)), self.k)


def per_unit(values: np.ndarray, num_units: int) -> np.ndarray:
    """Regroup unit-major rows (units * K, ...) as (K, units, ...): column j holds unit j's rows."""
    values = np.asarray(values)
    if values.shape[0] % num_units:
        raise ArgumentError("values", f"expected a multiple of {num_units} rows (units * K), got {values.shape[0]}")
    return np.swapaxes(values.reshape(num_units, -1, *values.shape[1:]), 0, 1)


def study_units(scores: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int, count: int = 6,
                units=None) -> UnitStudy:
    """Top-K -> selectivity -> alive units -> units to show, in one call.

    Args:
      scores: float (N, units), e.g. ``unit_scores(layer_features(...))``.
      labels: int (N,) classes of the images.
      num_classes: number of classes (>= 2).
      k: top images per unit, 1 <= k <= N.
      count: how many units to pick when ``units`` is None (positive).
      units: optional indices of the units to show (ints in [0, units)).

    Returns:
      ``UnitStudy``.
    """
    scores = np.asarray(scores, np.float32)
    top = top_k_images(scores, k)
    selectivity = unit_selectivity(top.indices, labels, num_classes, scores=scores)
    alive = scores.max(0) > 0
    if units is None:
        shown = tuple(pick_units(selectivity, count, alive=alive))
    else:
        shown = unit_indices(units, scores.shape[1])
    return UnitStudy(scores, top, selectivity, alive, shown)
