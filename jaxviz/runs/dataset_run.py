"""A perturbation method over a whole dataset: streamed in steps, written to disk, resumable, multi-process.

``run_dataset(network, images, out, method="occlusion", ...)`` works in two
passes over fixed blocks of ``images_per_step`` images (step ``s`` covers
images ``[s * B, (s + 1) * B)``; the last block is padded):

1. f on every image: per-unit scores (``base``), the predicted class, each
   unit's top-K images (a running top-K; ties go to the lower index, as a
   stable sort of the whole set) and the count of each predicted class.
2. the method's maps of every image, reduced on the device in the same
   program (``jaxviz.runs.program``) to the per-image maximum and its
   position, each unit's mean map over its top-K images and each class's
   mean map over the images predicted as that class; optionally the full
   grid of maps is written too.

After every step process 0 writes a completion record (atomic, checksummed)
holding the running state, so a run killed at any point and started again
with the same arguments continues after the last recorded step and ends
with the same store, bit for bit. Only blocks of images (never the dataset)
and the fixed-size state are held in memory.

One run at a time writes a folder (process 0 holds ``jaxviz._io.path_lock``
beside it for the whole run), and only an absent or empty folder or a run
(``store.not_a_run``) is written. A store that lacks an array it should hold
is recomputed from scratch; ``overwrite`` always starts afresh.

With ``jax.distributed`` initialized (``initialize_distributed``), the
devices of every process form one mesh: each process reads and computes its
share of every block, writes its rows of the grid, and the program's
collectives combine the sums; process 0 writes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz._batching import batch_sharding
from jaxviz._io import LockHeldError, path_lock
from jaxviz.checks import (
    ArgumentError,
    ArgumentTypeError,
    NotADirectoryArgumentError,
    PathExistsError,
    check_bool,
    check_int,
)
from jaxviz.engine.inputs import fill_array, unit_indices
from jaxviz.engine.perturb import BLUR_SIGMA, bytes_per_pair
from jaxviz.engine.plan import chunk_size_for, probe, signature
from jaxviz.methods import registry
from jaxviz.models.network import Network
from jaxviz.runs import store
from jaxviz.runs.passes import Job, execute, first_record
from jaxviz.runs.program import MapSpec
from jaxviz.runs.reader import Run, expected_arrays, open_run, read_settings
from jaxviz.runs.store import fingerprint
from jaxviz.runs.streaming import barrier

__all__ = ["check_source", "run_dataset"]


def check_source(images: Any, network: Network) -> Any:
    """``images`` (or a ``Dataset``'s images) checked: a sliceable non-empty uint8 (N, H, W, C) array of the
    network's input size, returned as is (nothing is read but its shape and dtype)."""
    images = getattr(images, "images", images)  # a jaxviz Dataset
    if not all(hasattr(images, a) for a in ("shape", "dtype", "__getitem__")):
        raise ArgumentTypeError("images", f"expected an array-like (N, H, W, C) of uint8 that can be sliced (numpy array, "
                        f"memory map, zarr or tensorstore array, jaxviz.Dataset), got {type(images).__name__}")
    shape = tuple(int(d) for d in images.shape)
    if len(shape) != 4 or shape[0] == 0:
        raise ArgumentError("images", f"expected a non-empty (N, H, W, C) array, got shape {shape}")
    if np.dtype(images.dtype) != np.uint8:
        raise ArgumentTypeError("images", f"expected uint8 pixels (the network converts them), got {np.dtype(images.dtype)}")
    network.input_spec.check_images(np.zeros((1, *shape[1:]), np.uint8))
    return images


def _fill_setting(fill: Any, fills: Any) -> Any:
    """How the fill is recorded in the settings: the string, the number, the values, or a fingerprint."""
    if isinstance(fill, str):
        return fill
    values = np.asarray(fill, np.float64)
    return values.tolist() if values.size <= 16 else fingerprint(np.asarray(fills))


def _create(job: Job) -> None:
    """A fresh store: the per-image arrays (chunked by step; the grid by image), then the settings."""
    out, n, kept, shape = job.out, job.n, job.kept, job.spec.map_shape
    store.mark(out)  # first: what is cleared now or later is a run's
    store.clear(out)
    store.create_array(out, "base", (n, kept), np.float32, (job.batch, kept))
    store.create_array(out, "predicted", (n,), np.int32, (job.batch,))
    store.create_array(out, "max_drop", (n, kept), np.float32, (job.batch, kept))
    store.create_array(out, "max_drop_position", (n, kept, 2), np.int32, (job.batch, kept, 2))
    if job.keep_grid:
        store.create_array(out, "grid", (n, *shape, kept), np.float32, (1, *shape, kept), fill_value="NaN")
    store.write_json(out / "settings.json", job.settings)  # last: a store without settings is no store


def run_dataset(network: Network, images: Any, out: str | Path, *, method: str = "occlusion",
                layer: str | None = None, units: Any = None, fill: Any = 0.0, k: int = 9, keep_grid: bool = False,
                images_per_step: int = 64, chunk_size: int | None = None, memory_budget: int | None = None,
                overwrite: bool = False, progress: bool = True, **options: Any) -> Run:
    """Run a perturbation method over every image of a dataset into the store ``out``.

    Args:
      network: the model (``jaxviz.Network``).
      images: uint8 (N, H, W, C) that can be sliced: a numpy array or memory
        map, a zarr / tensorstore / h5py array, or a ``jaxviz.Dataset``. Only
        blocks of ``images_per_step`` rows are read at a time.
      out: the run directory (created; a run already there with the same
        settings is resumed; a store that lacks an array it should hold is
        recomputed from scratch). It must be absent, empty or a run: a
        folder holding anything else is refused, never emptied. One run at a
        time writes a folder (a lock beside it, ``.<name>.lock``).
      method: a registered method a run can stream (``registry.names(run=True)``: occlusion, rise,
        ablation).
      layer: the explained layer (default: the output layer); conv maps are
        averaged over space (``Network.score_fn``).
      units: indices of the layer's units to keep (default all), U of them.
      fill: a number, per-channel (C,) or image (H, W, C) values in model
        input space, or ``"blur"``.
      k: images per unit in the top-K mean maps (at most N).
      keep_grid: also write every map, (N, R, C, U) float32, one storage
        chunk per image.
      images_per_step: B, images per step (at most N; a padded multiple of
        the device count); a setting of the run (it fixes the order of the
        sums).
      chunk_size, memory_budget: (image, mask) pairs per device per call, as
        in ``occlude``.
      overwrite: start afresh: replace a run made with other settings (or
        a damaged one) instead of refusing or resuming.
      progress: show a progress bar and the ETA (process 0 only).
      **options: the method's options (its options dataclass: occlusion's ``window``, ``stride``,
        ``anchor``; ablation's ``segments`` (cells per side); RISE's ``num_masks``, ``cells``, ``p``,
        ``seed``), defaults there.

    Returns:
      The finished ``Run`` (``open_run(out)``).

    Raises:
      TypeError / ValueError naming the argument, before any work; ValueError
      when ``out`` holds a run with other settings or damaged settings;
      FileExistsError when ``out`` holds something that is not a run;
      BlockingIOError when another run is writing ``out``; ``RunStoreError``
      (an ``OSError``) when writing fails: the steps already recorded stay
      valid.
    """
    job = _job(network, images, out, method=method, layer=layer, units=units, options=options, fill=fill, k=k,
               keep_grid=keep_grid, images_per_step=images_per_step, chunk_size=chunk_size,
               memory_budget=memory_budget, progress=progress)
    out, shown = job.out, os.fsdecode(out)
    overwrite = check_bool(overwrite, "overwrite")
    _check_folder(job, shown, overwrite)
    try:
        if job.lead:  # the lock file lies beside the folder
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise store.RunStoreError(f"could not create {out.parent}: {e}") from None
        lock = path_lock(out) if job.lead else contextlib.nullcontext()  # one writer per run folder: process 0
        with lock:
            if job.lead:
                _prepare_store(job, shown, overwrite)
            barrier("jaxviz-run-store")
            _, record, corrupt = store.latest_record(out)
            if corrupt and job.lead:
                print(f"jaxviz: ignored corrupt completion record(s) {', '.join(p.name for p in corrupt)}; the "
                      f"steps they covered are recomputed", file=sys.stderr)
            record = first_record(job) if record is None else record
            if int(record["phase"]) < 3:  # else finished: nothing to do
                execute(job, record)
            barrier("jaxviz-run-done")
            try:
                return open_run(out)
            except (ValueError, OSError) as e:  # the argument here is out
                raise type(e)(str(e).replace("path:", "out:", 1)) from None
    except LockHeldError as e:
        raise BlockingIOError(f"out: a jaxviz run is in progress in {shown!r} (lock file {str(e.lock)!r} held by "
                              f"pid {e.pid if e.pid is not None else 'unknown'}); wait for it to end or choose "
                              f"another directory") from None
    except store.RunStoreError as e:  # only failures to write: a reading error of the images is not one
        raise store.RunStoreError(f"{e}. The steps recorded so far stay valid: make room (or fix the permissions) "
                                  f"and run the same command again to resume") from None


def _check_folder(job: Job, shown: str, overwrite: bool) -> dict | None:
    """``out`` may be written (absent, empty or a run); the settings of the run there (None: start afresh).

    A run with other settings, or damaged settings, is refused unless ``overwrite`` (then: afresh)."""
    why = store.not_a_run(job.out)
    if why is not None:
        raise PathExistsError(f"out: refusing to write into {shown!r}: {why}; choose another directory or empty it")
    try:
        previous = read_settings(job.out)
    except ValueError as e:
        if overwrite:
            return None
        raise ArgumentError("out", f"{e}") from None
    if previous is not None and previous != job.settings and not overwrite:
        differ = sorted(key for key in set(previous) | set(job.settings) if previous.get(key) != job.settings.get(key))
        raise ArgumentError("out", f"{shown!r} holds a run with other settings ({', '.join(differ)} differ); "
                         f"choose another directory or pass overwrite=True to replace it")
    return None if overwrite else previous


def _prepare_store(job: Job, shown: str, overwrite: bool) -> None:
    """Process 0, holding the lock: check the folder again (it may have changed), then resume the run there
    or start afresh: with ``overwrite``, other settings, or a store that lacks an array it should hold."""
    out = job.out
    previous = _check_folder(job, shown, overwrite)
    created = not out.exists()
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise store.RunStoreError(f"could not create {out}: {e}") from None
        if previous == job.settings:
            _, record, _ = store.latest_record(out)
            complete = record is not None and int(record["phase"]) == 3
            missing = [name for name in expected_arrays(job.settings, complete) if not store.array_opens(out, name)]
            if not missing:
                store.mark(out)  # a run made before the marker existed
                return
            print(f"jaxviz: the run in {shown} lacks the array(s) {', '.join(missing)} (deleted or damaged); it is "
                  f"recomputed from scratch", file=sys.stderr)
        _create(job)
    except BaseException:
        if created and not (out / "settings.json").exists():  # nothing usable was written: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise


def _job(network, images, out, *, method, layer, units, options, fill, k, keep_grid, images_per_step, chunk_size, memory_budget, progress) -> Job:
    """Check every argument (errors name it) and plan the run, before any work."""
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    if not isinstance(out, (str, Path)):
        raise ArgumentTypeError("out", f"expected a directory path, got {type(out).__name__}")
    if not os.fspath(out):
        raise ArgumentError("out", "expected a directory path, got ''")
    if Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryArgumentError(f"out: expected a directory, but {str(out)!r} is a file")
    images = check_source(images, network)
    n, h, w, c = (int(d) for d in images.shape)
    layer = network.output_layer if layer is None else layer
    network.check_layer(layer)
    f = network.score_fn(layer)
    width, example_bytes = probe(f, True, signature(network.variables), (h, w, c), network.input_spec.dtype)
    if len(width) != 1:
        raise ArgumentError("layer", f"expected per-unit scores (N, units) from {layer!r}, got per-image shape {width}")
    units = None if units is None else unit_indices(units, width[0])
    kept = width[0] if units is None else len(units)
    chosen = registry.get(method, run=True)
    if "fill" in options:
        raise ArgumentError("fill", "given twice")
    run = chosen.run_family(registry.method_options((chosen,), options)[chosen.name], (h, w, c))
    k = min(check_int(k, "k", 1), n)
    batch = min(check_int(images_per_step, "images_per_step", 1), n)  # a larger step would only pad
    keep_grid = check_bool(keep_grid, "keep_grid")
    if isinstance(fill, np.ndarray) and fill.ndim == 4:
        raise ArgumentError("fill", "per-image fills are not supported over a dataset; give a number, per-channel (C,) "
                         "or image (H, W, C) values, or 'blur'")
    head, tail = np.asarray(images[0:1]), np.asarray(images[n - 1:n])  # the only reads before the passes
    fills, per_image_fill = fill_array(fill, network.to_input(head), BLUR_SIGMA)
    mesh = batch_sharding().mesh
    per_pair = bytes_per_pair(example_bytes, (h, w, c), np.dtype(np.float32).itemsize, kept)  # float32 inputs
    per_device = -(-batch // mesh.size) * run.family.count
    sub_chunk = chunk_size_for(per_pair, per_device, 1, chunk_size, memory_budget, "(image, mask) pairs")
    settings = {"format": store.FORMAT, "method": method, **run.settings, "layer": layer,
                "units": None if units is None else list(units), "k": k, "keep_grid": keep_grid,
                "fill": _fill_setting(fill, fills), "images_per_step": batch, "images": n,
                "image_shape": [h, w, c], "map_shape": list(run.map_shape), "masks_per_image": run.family.count,
                "classes": list(network.class_names or ()), "model": network.name or "",
                "model_fingerprint": fingerprint(network.variables), "data_fingerprint": fingerprint(head, tail)}
    return Job(network, images, store.resolve(out), f, units, kept,
               network.score_fn(network.output_layer) if network.is_classifier else None,
               len(network.class_names) if network.is_classifier else 0, run.family,
               MapSpec(method, run.reduce, run.family.generate, run.family.count, tuple(run.map_shape), run.scale,
                       sub_chunk), fills,
               per_image_fill, k, batch, keep_grid, mesh, bool(progress),
               json.loads(json.dumps(settings)))  # as read back from settings.json
