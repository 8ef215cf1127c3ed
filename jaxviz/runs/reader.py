"""Reading a dataset run back: ``open_run(DIR)``."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, NotADirectoryArgumentError, PathNotFoundError
from jaxviz.runs import store

__all__ = ["Run", "damaged", "expected_arrays", "open_run", "read_settings"]

PER_IMAGE = ("base", "predicted", "max_drop", "max_drop_position")
FINAL = ("unit_mean_map", "topk_images", "topk_scores", "class_mean_map", "class_counts")
CLASS_ARRAYS = ("class_mean_map", "class_counts")


def expected_arrays(settings: dict, complete: bool) -> tuple[str, ...]:
    """The arrays a run with ``settings`` holds: the per-image ones (and the grid), and once ``complete``
    the aggregates (the class ones only for a model with classes)."""
    names = PER_IMAGE + (("grid",) if settings.get("keep_grid") else ())
    if complete:
        names += tuple(n for n in FINAL if settings.get("classes") or n not in CLASS_ARRAYS)
    return names


def damaged(what: str) -> str:
    """The advice on a damaged run: what is damaged, and how to recompute it."""
    return f"{what}; run it again with overwrite=True to recompute the run from scratch"


def read_settings(path: Path) -> dict | None:
    """``settings.json`` of the run in ``path`` (None when absent); ValueError naming the file when damaged."""
    try:
        return store.read_json(Path(path) / "settings.json")
    except ValueError as e:
        raise ValueError(damaged(str(e))) from None


@dataclasses.dataclass(frozen=True)
class Run:
    """A dataset run on disk (``run_dataset`` / ``jaxviz occlude --all``).

    Attributes:
      path: the run directory (absolute, normalized).
      settings: what was run (``settings.json``): method and options, layer,
        units, ``map_shape`` (R, C), ``images`` N, ``images_per_step``, the
        model's fingerprint (a hash of every variable) and the data's (a hash
        of the first and the last image: a cheap check, not a full one), ...
      complete: whether every step is recorded and every array is there
        (each one's metadata opens; a run with a missing array is not
        complete, and ``run_dataset`` recomputes it).
      summary: ``summary.json`` (throughput, where the time went), or None
        before the run has finished (or when the file is damaged: a warning
        says so, and the arrays stay readable).

    ``aggregates`` maps names to numpy arrays (U = kept units, K = classes):

    * ``base`` (N, U): the unit scores of every image; ``predicted`` (N,)
      int32: its predicted class (0 for a model without classes);
    * ``max_drop`` (N, U): the largest map value of each image and unit
      (occlusion: the largest drop when a window is hidden) and
      ``max_drop_position`` (N, U, 2) int32: its (row, col) in the map;
    * ``unit_mean_map`` (U, R, C): each unit's mean map over its top-K images,
      ``topk_images`` (U, k) and ``topk_scores`` (U, k): those images, by
      score, descending;
    * ``class_mean_map`` (K, U, R, C): the mean map over the images predicted
      as each class, and ``class_counts`` (K,). Explaining the output layer,
      ``class_mean_map[c, c]`` is the mean map of the predicted class.

    Before the run is complete only the per-image arrays exist (rows not yet
    computed read as 0). An array that cannot be read (a garbled chunk)
    raises ``ValueError`` naming it and saying to rerun with ``overwrite``.
    """

    path: Path
    settings: dict
    complete: bool
    summary: dict | None

    @functools.cached_property
    def aggregates(self) -> dict[str, np.ndarray]:
        names = PER_IMAGE + (FINAL if self.complete else ())
        return {name: self._read(name) for name in names if (self.path / "arrays" / name).is_dir()}

    def _read(self, name: str) -> np.ndarray:
        try:
            return np.asarray(store.open_array(self.path, name).read().result())
        except Exception as e:  # tensorstore: ValueError for a garbled chunk; RunStoreError for bad metadata
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(damaged(f"{self.path / 'arrays' / name} cannot be read ({first[:120]})")) from None

    @property
    def grid(self) -> Any | None:
        """Every map, (N, R, C, U) float32, as a lazy tensorstore array (``np.asarray(run.grid[i])`` reads
        image i; NaN where not yet written), or None when the run did not keep it."""
        return store.open_array(self.path, "grid") if self.settings.get("keep_grid") else None


def open_run(path: str | os.PathLike) -> Run:
    """Open the run in directory ``path`` (``run.path`` is absolute).

    Raises:
      TypeError: ``path`` is not a path. NotADirectoryError: it is a file.
      FileNotFoundError: no run there (no ``settings.json``). ValueError:
      ``settings.json`` is damaged (rerun with ``overwrite=True``).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ArgumentTypeError("path", f"expected a run directory (str or os.PathLike), got {path!r}"[:200])
    shown = os.fsdecode(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryArgumentError(f"path: expected a run directory, but {shown!r} is a file")
    path = store.resolve(path)
    try:
        settings = read_settings(path)
    except ValueError as e:
        raise ArgumentError("path", f"{e}") from None
    if settings is None:
        raise PathNotFoundError(f"path: no jaxviz run in {shown!r} (settings.json is missing)")
    _, record, _ = store.latest_record(path)
    complete = record is not None and int(record["phase"]) == 3 and all(
        store.array_opens(path, name) for name in expected_arrays(settings, True))
    summary = None
    if complete:
        try:
            summary = store.read_json(path / "summary.json")
        except ValueError as e:
            warnings.warn(f"{e}; it only holds timings: the run's arrays are intact", stacklevel=2)
    return Run(path, settings, complete, summary)
