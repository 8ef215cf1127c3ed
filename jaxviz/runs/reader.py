"""Reading a dataset run back: ``open_run(DIR)``."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz.runs import store

__all__ = ["Run", "open_run"]

PER_IMAGE = ("base", "predicted", "max_drop", "max_drop_position")
FINAL = ("unit_mean_map", "topk_images", "topk_scores", "class_mean_map", "class_counts")


@dataclasses.dataclass(frozen=True)
class Run:
    """A dataset run on disk (``run_dataset`` / ``jaxviz occlude --all``).

    Attributes:
      path: the run directory.
      settings: what was run (``settings.json``): method and options, layer,
        units, ``map_shape`` (R, C), ``images`` N, ``images_per_step``, the
        model's fingerprint (a hash of every variable) and the data's (a hash
        of the first and the last image: a cheap check, not a full one), ...
      complete: whether every step and the aggregates are written.
      summary: ``summary.json`` (throughput, where the time went), or None
        before the run has finished.

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
    computed read as 0).
    """

    path: Path
    settings: dict
    complete: bool
    summary: dict | None

    @functools.cached_property
    def aggregates(self) -> dict[str, np.ndarray]:
        names = PER_IMAGE + (FINAL if self.complete else ())
        return {name: np.asarray(store.open_array(self.path, name).read().result())
                for name in names if (self.path / "arrays" / name).is_dir()}

    @property
    def grid(self) -> Any | None:
        """Every map, (N, R, C, U) float32, as a lazy tensorstore array (``np.asarray(run.grid[i])`` reads
        image i; NaN where not yet written), or None when the run did not keep it."""
        return store.open_array(self.path, "grid") if self.settings.get("keep_grid") else None


def open_run(path: str | Path) -> Run:
    """Open the run in directory ``path``.

    Raises:
      FileNotFoundError: no run there (no ``settings.json``).
    """
    path = Path(path)
    settings = store.read_json(path / "settings.json")
    if settings is None:
        raise FileNotFoundError(f"path: no jaxviz run in {path} (settings.json is missing)")
    _, record, _ = store.latest_record(path)
    complete = record is not None and int(record["phase"]) == 3
    return Run(path, settings, complete, store.read_json(path / "summary.json") if complete else None)
