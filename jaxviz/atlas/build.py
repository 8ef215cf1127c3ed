"""``build_atlas``: every unit of the chosen layers, from a whole dataset, in stages that are recorded.

Stages (each one's results are kept in the build cache beside the atlas, ``.<name>.atlas-cache``, in a file
named after every setting it depends on (while it runs, its records or parts are in a ``.work`` folder of that
name), so a killed build resumes where it stopped and a layer added later
does not recompute the others):

1. **statistics**: one pass over the dataset for every layer not yet summed (``statistics.dataset_statistics``):
   each unit's top-K images, class-conditional sums, the sums of the unit correlations; a record per step.
2. **occlusion**, per layer: one dataset run (``run_dataset``, method occlusion, the grid kept) over the *union*
   of the live units' top-K images with every live unit as an output; its records make it resumable. Each
   (unit, top image) keeps the map of that unit; the run is then deleted.
3. **visualization**, per layer: ``visualize_with_exemplars`` of the live units, in parts of ``VIS_PART`` units,
   each part written as it ends (with ``jax.distributed``, process p draws parts p, p + P, ...).
4. **site**: the static site (``site.write_site``) is written to a temporary folder and swapped in whole, as the
   report is (``report.folder.write_folder``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxviz._batching import batch_sharding
from jaxviz._io import LockHeldError, atomic_write_bytes, path_lock
from jaxviz._progress import progress_bar
from jaxviz.analysis.looks_for import visualize_with_exemplars
from jaxviz.analysis.topk import TopK
from jaxviz.analysis.unit_occlusion import UNIT_WINDOW
from jaxviz.atlas import site
from jaxviz.atlas.statistics import LayerStatistics, dataset_statistics
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_int, check_real
from jaxviz.data import Dataset
from jaxviz.engine.inputs import unit_indices
from jaxviz.models.network import Network
from jaxviz.report.folder import check_folder, write_folder
from jaxviz.runs.dataset_run import run_dataset
from jaxviz.runs.store import fingerprint, settings_key
from jaxviz.runs.streaming import Rows, barrier
from jaxviz.visualization.visualize import check_visualization

__all__ = ["Atlas", "build_atlas", "cache_folder"]

VIS_PART = 64  # units per recorded part of the visualization stage
OCCLUSION_STRIDE = 4  # pixels; the unit study's (occlude_top_images) with its window UNIT_WINDOW


@dataclasses.dataclass(frozen=True)
class Atlas:
    """A built atlas.

    Attributes:
      path: the site's folder (open ``path / "index.html"``).
      layers: the layers it shows.
      units: per layer, the units it shows.
      dead: per layer, the shown units never above 0 on the data.
      seconds: wall time per stage of this build (0 for a stage found in the cache).
      reused: the (stage, layer) pairs found in the cache.
      size_bytes: the site's size on disk.
    """

    path: Path
    layers: tuple[str, ...]
    units: dict[str, tuple[int, ...]]
    dead: dict[str, tuple[int, ...]]
    seconds: dict[str, float]
    reused: tuple[tuple[str, str], ...]
    size_bytes: int


def cache_folder(out: str | os.PathLike) -> Path:
    """Where the build of the atlas ``out`` keeps its stages: ``.<name>.atlas-cache`` beside it."""
    out = Path(os.path.realpath(out))
    return out.with_name(f".{out.name}.atlas-cache")


CACHE_FORMAT = 1  # in every stage's key: a change of what a stage stores makes earlier caches unread


def _key(**parts: Any) -> str:
    return settings_key(**parts, format=CACHE_FORMAT)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def _say(text: str, progress: bool) -> None:
    if progress and jax.process_index() == 0:
        print(f"atlas: {text}", file=sys.stderr, flush=True)


def _not_an_atlas(out: Path) -> str | None:
    entries = {e.name for e in os.scandir(out)}
    if not entries:
        return None
    try:
        manifest = json.loads((out / site.MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        manifest = None
    if not (isinstance(manifest, dict) and manifest.get("jaxviz_atlas") == site.FORMAT):
        return f"it is not empty and is not a jaxviz atlas (no jaxviz {site.MANIFEST})"
    foreign = sorted(entries - set(site.ENTRIES))
    if foreign:
        return f"besides a jaxviz atlas it holds {', '.join(map(repr, foreign[:5]))}"
    return None


def check_atlas_dir(out: str | os.PathLike) -> Path:
    """``out`` may take an atlas: absent, empty or an atlas (then replaced); the absolute path."""
    return check_folder(out, _not_an_atlas, "out")


def _check(network, dataset, out, layers, units, k, steps, pictures, diversity, window, stride, images_per_step,
           seed) -> tuple[Dataset, Path, tuple[str, ...], dict[str, tuple[int, ...]]]:
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    if not isinstance(dataset, Dataset):
        raise ArgumentTypeError("dataset", f"expected a jaxviz.Dataset (images with labels), got "
                                           f"{type(dataset).__name__}")
    network.input_spec.check_images(dataset.images[:1], "dataset")
    if network.is_classifier and tuple(dataset.class_names) != tuple(network.class_names):
        unknown = [c for c in dataset.class_names if c not in network.class_names]
        if unknown:
            raise ArgumentError("dataset", f"expected classes the model knows ({list(network.class_names)}), got "
                                           f"{unknown}")
        dataset = dataset.with_classes(network.class_names)
    path = check_atlas_dir(out)
    n = len(dataset.images)
    layers = (network.feature_layer,) if layers is None else (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers or not all(isinstance(layer, str) for layer in layers):
        raise ArgumentError("layers", f"expected layer names, e.g. ('conv6', 'fc1'), got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ArgumentError("layers", f"expected each layer once, got {list(layers)}")
    chosen = {}
    for layer in layers:
        network.check_layer(layer, "layers")
        shape = network.output_shape(layer)
        if len(shape) not in (1, 3):
            raise ArgumentError("layers", f"expected layers with units, (units,) or (h, w, channels), got "
                                          f"{layer!r} of shape {shape}")
        width = network.num_units(layer)
        if isinstance(units, slice):
            chosen[layer] = tuple(range(width))[units]
            if not chosen[layer]:
                raise ArgumentError("units", f"expected a range of units in [0, {width}) of {layer}, got "
                                             f"{units.start}:{'' if units.stop is None else units.stop}")
        else:
            chosen[layer] = tuple(range(width)) if units is None else tuple(int(u) for u in unit_indices(units, width))
    check_int(k, "k", 1, n, what=f" (at most the dataset's {n} images)")
    check_int(pictures, "pictures", 1)
    check_real(diversity, "diversity", 0.0)
    check_int(window, "window", 1)
    check_int(stride, "stride", 1)
    check_int(images_per_step, "images_per_step", 1)
    for layer in layers:
        check_visualization(network, layer, list(chosen[layer]), steps=steps, batch=pictures, diversity=diversity,
                            seed=seed)
    return dataset, path, layers, chosen


def build_atlas(network: Network, dataset: Dataset, out: str | os.PathLike, *, layers: Sequence[str] | None = None,
                units: Sequence[int] | slice | None = None, k: int = 16, steps: int = 128, pictures: int = 2,
                diversity: float = 0.0, window: int = UNIT_WINDOW, stride: int = OCCLUSION_STRIDE,
                images_per_step: int = 128, seed: int = 0, progress: bool = True) -> Atlas:
    """Build a static site of every unit of ``layers``, from every image of ``dataset``.

    Args:
      network: the model.
      dataset: the images (uint8 (N, H, W, C) at the network's size) with their labels.
      out: the site's folder: absent, empty or an earlier atlas (replaced whole at the end). The stages are kept
        in ``cache_folder(out)`` beside it.
      layers: layers with per-unit scores (dense, or conv maps averaged over space); default the network's
        ``feature_layer``.
      units: the units to show in each layer: unit numbers or a ``slice`` (default all).
      k: top images per unit, at most N.
      steps, pictures, diversity, seed: each unit's feature visualizations (``visualize``'s ``steps``, ``batch``,
        ``diversity``, ``seed``); with one picture there is no diversity term. The pictures of a unit differ
        without it (each starts from its own noise and transforms); a diversity weight that suits one layer can
        drown a weak unit's objective (at 0.05, 4 of 5 fc1 units tried stayed at 0 after 128 steps).
      window, stride: the occluder (pixels) of the top images' occlusion maps.
      images_per_step: images per step of the dataset passes (a recorded step).
      progress: stage lines and progress bars with an ETA on stderr.

    Returns:
      ``Atlas``.

    Raises:
      ``ArgumentError`` (a ``ValueError``) / ``ArgumentTypeError`` naming the argument before any work;
      ``FileExistsError`` when ``out`` holds something that is not an atlas; ``BlockingIOError`` when another
      build holds the cache or the folder.
    """
    if pictures == 1:
        diversity = 0.0  # one picture per unit: nothing to push apart
    dataset, path, layers, chosen = _check(network, dataset, out, layers, units, k, steps, pictures, diversity,
                                           window, stride, images_per_step, seed)
    cache = cache_folder(path)
    lead = jax.process_index() == 0
    try:
        if lead:
            cache.mkdir(parents=True, exist_ok=True)
        barrier("jaxviz-atlas-cache")
        with path_lock(cache) if lead else contextlib.nullcontext():  # one build per cache: process 0 holds it
            return _build(network, dataset, path, cache, layers, chosen, k=k, steps=steps, pictures=pictures,
                          diversity=diversity, window=window, stride=stride, images_per_step=images_per_step,
                          seed=seed, progress=progress)
    except LockHeldError as e:
        raise BlockingIOError(f"out: another jaxviz atlas build is using {str(cache)!r} (lock file {str(e.lock)!r} "
                              f"held by pid {e.pid if e.pid is not None else 'unknown'})") from None


def _build(network, dataset, path, cache, layers, chosen, *, k, steps, pictures, diversity, window, stride,
           images_per_step, seed, progress) -> Atlas:
    images, labels, classes = dataset.images, dataset.labels, len(dataset.class_names)
    model_key = fingerprint(network.variables)
    data_key = fingerprint(images[:1], images[-1:], labels) + f"-{len(images)}"
    mesh = batch_sharding().mesh
    lead = jax.process_index() == 0
    seconds = {"statistics": 0.0, "occlusion": 0.0, "visualization": 0.0, "site": 0.0}
    reused = []

    # 1. statistics of every layer not yet summed, in one pass
    keys = {layer: _key(stage="statistics", model=model_key, data=data_key, layer=layer, k=k,
                        images_per_step=images_per_step) for layer in layers}
    stats: dict[str, LayerStatistics] = {}
    for layer in layers:
        found = _load_npz(cache / f"statistics-{keys[layer]}.npz")
        if found is not None:
            stats[layer] = LayerStatistics.from_arrays(found)
            reused.append(("statistics", layer))
    missing = tuple(layer for layer in layers if layer not in stats)
    if missing:
        t = time.perf_counter()
        _say(f"[1/4] statistics of {', '.join(missing)} over {len(images):,} images", progress)
        folder = cache / f"statistics-pass-{_key(layers=[keys[m] for m in missing])}"
        stats |= dataset_statistics(network, images, labels, classes, missing, k=k, folder=folder,
                                    images_per_step=images_per_step, mesh=mesh, progress=progress)
        if lead:
            for layer in missing:
                _save_npz(cache / f"statistics-{keys[layer]}.npz", stats[layer].arrays())
            shutil.rmtree(folder, ignore_errors=True)
        barrier("jaxviz-atlas-statistics-saved")
        seconds["statistics"] = time.perf_counter() - t

    live = {layer: tuple(u for u in chosen[layer] if stats[layer].topk_values[0, u] > 0) for layer in layers}

    # 2. occlusion of the union of each layer's live units' top-K images; 3. feature visualization of every live unit
    def stage(name: str, layer: str, key: str, compute) -> dict[str, np.ndarray]:
        """A stage of one layer: its result from the cache, else ``compute(work folder)``, saved, the work
        folder (the stage's records or parts) removed."""
        file = cache / f"{name}-{key}.npz"
        found = _load_npz(file)
        if found is not None:
            reused.append((name, layer))
            return found
        t, work = time.perf_counter(), cache / f"{name}-{key}.work"
        result = compute(work)
        if lead:
            _save_npz(file, result)
            shutil.rmtree(work, ignore_errors=True)
        barrier(f"jaxviz-atlas-{name}-saved")
        seconds[name] += time.perf_counter() - t
        return result

    occlusion = {layer: stage("occlusion", layer, _key(stage="occlusion", statistics=keys[layer], units=live[layer],
                                                         window=window, stride=stride, images_per_step=images_per_step),
                              lambda work, layer=layer: _occlusion_stage(
                                  network, images, layer, live[layer], stats[layer], work, window=window,
                                  stride=stride, images_per_step=images_per_step, progress=progress))
                 for layer in layers}
    pictures_of = {layer: stage("visualization", layer, _key(stage="visualization", statistics=keys[layer],
                                                             units=live[layer], steps=steps, pictures=pictures,
                                                             diversity=diversity, seed=seed),
                                lambda work, layer=layer: _visualization_stage(
                                    network, layer, live[layer], stats[layer], labels, classes, work, steps=steps,
                                    pictures=pictures, diversity=diversity, seed=seed, progress=progress))
                   for layer in layers}

    # 4. the site, swapped in whole
    t = time.perf_counter()
    settings = {"k": k, "steps": steps, "pictures": pictures, "diversity": diversity, "window": window,
                "stride": stride, "images_per_step": images_per_step, "seed": seed, "images": len(images),
                "data": dataset.source}
    if lead:
        _say("[4/4] site", progress)
        write_folder(path, lambda tmp: site.write_site(tmp, network, dataset, layers, chosen, stats, occlusion,
                                                       pictures_of, settings),
                     not_ours=_not_an_atlas, name="out", what="atlas")
    barrier("jaxviz-atlas-site")
    seconds["site"] = time.perf_counter() - t
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if lead else 0
    return Atlas(path, layers, chosen, {layer: tuple(u for u in chosen[layer] if u not in live[layer])
                                        for layer in layers}, seconds, tuple(reused), size)


def _occlusion_stage(network, images, layer, live, stats, folder, *, window, stride, images_per_step,
                     progress) -> dict[str, np.ndarray]:
    """Maps (live units, k, R, C) of each live unit's top-K images for that unit, and the images' union."""
    top = stats.topk_index[:, list(live)] if live else np.zeros((stats.topk_index.shape[0], 0), np.int64)
    union = np.unique(top)
    if not live:
        return {"union": union, "maps": np.zeros((0, top.shape[0], 1, 1), np.float32)}
    _say(f"[2/4] occlusion of {layer}: the {len(union):,} top images of its {len(live)} live units", progress)
    run = run_dataset(network, Rows(images, union), folder, method="occlusion", layer=layer, units=live, k=1,
                      keep_grid=True, images_per_step=min(images_per_step, len(union)), progress=progress,
                      window=window, stride=stride)
    grid = run.grid
    position = np.searchsorted(union, top)  # (k, live)
    maps = np.zeros((len(live), top.shape[0], *grid.shape[1:3]), np.float32)
    block = 256
    for a in range(0, len(union), block):
        rows = np.asarray(grid[a:min(a + block, len(union))].read().result())  # (b, R, C, live)
        hit = (position >= a) & (position < a + len(rows))
        j, u = np.nonzero(hit)
        maps[u, j] = rows[position[j, u] - a, :, :, u]  # two index arrays: (pairs, R, C)
    return {"union": union, "maps": maps}


def _visualization_stage(network, layer, live, stats, labels, classes, folder, *, steps, pictures, diversity, seed,
                         progress) -> dict[str, np.ndarray]:
    """Each live unit's pictures, their activations and predicted classes, in recorded parts."""
    top = TopK(stats.topk_index, stats.topk_values)
    parts = [live[i:i + VIS_PART] for i in range(0, len(live), VIS_PART)]
    folder.mkdir(parents=True, exist_ok=True)
    processes, me = jax.process_count(), jax.process_index()
    done = sum(1 for i in range(len(parts)) if (folder / f"part-{i:05d}.npz").is_file())
    _say(f"[3/4] feature visualization of {layer}: {len(live)} live units x {pictures} pictures x {steps} steps "
         f"({done} of {len(parts)} parts done)", progress)
    mine = [i for i in range(len(parts)) if i % processes == me]
    with progress_bar(total=sum(len(parts[i]) for i in mine), desc=f"pictures {layer}", unit="unit",
                      disable=not progress or me != 0) as bar:  # the whole stage's ETA (this process's parts)
        for i in mine:
            file = folder / f"part-{i:05d}.npz"
            if _load_npz(file) is None:
                drawn = visualize_with_exemplars(network, layer, top, labels, classes, units=parts[i], steps=steps,
                                                 batch=pictures, diversity=diversity, seed=seed,
                                                 devices=jax.local_devices())
                v = drawn.visualization
                predicted = (np.zeros(v.activation.shape, np.int64) if drawn.predicted_class is None
                             else drawn.predicted_class)
                _save_npz(file, {"images": v.images, "activation": v.activation, "predicted": predicted,
                                 "exemplar_ratio": drawn.exemplar_ratio})
            bar.update(len(parts[i]))
    barrier("jaxviz-atlas-visualization-parts")
    found = [_load_npz(folder / f"part-{i:05d}.npz") for i in range(len(parts))]
    if not found:
        return {"images": np.zeros((0, pictures, *network.input_spec.shape), np.uint8),
                "activation": np.zeros((0, pictures), np.float32), "predicted": np.zeros((0, pictures), np.int64),
                "exemplar_ratio": np.zeros(0, np.float32)}
    return {name: np.concatenate([f[name] for f in found]) for name in found[0]}
