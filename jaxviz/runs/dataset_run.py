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

With ``jax.distributed`` initialized (``initialize_distributed``), the
devices of every process form one mesh: each process reads and computes its
share of every block, writes its rows of the grid, and the program's
collectives combine the sums; process 0 writes the rest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

import jaxviz
from jaxviz._batching import batch_sharding, round_up
from jaxviz._progress import progress_bar
from jaxviz.engine._inputs import _check_bool, _fill_array, check_int, unit_indices
from jaxviz.engine._plan import chunk_size_for, probe, signature
from jaxviz.models.network import Network
from jaxviz.runs import store
from jaxviz.runs.methods import RUN_METHODS, method_family
from jaxviz.runs.program import MapSpec, base_program, step_program
from jaxviz.runs.reader import Run, open_run

__all__ = ["run_dataset"]

BLUR_SIGMA = 3.0


def _check_source(images: Any, network: Network) -> Any:
    images = getattr(images, "images", images)  # a jaxviz Dataset
    if not all(hasattr(images, a) for a in ("shape", "dtype", "__getitem__")):
        raise TypeError(f"images: expected an array-like (N, H, W, C) of uint8 that can be sliced (numpy array, "
                        f"memory map, zarr or tensorstore array, jaxviz.Dataset), got {type(images).__name__}")
    shape = tuple(int(d) for d in images.shape)
    if len(shape) != 4 or shape[0] == 0:
        raise ValueError(f"images: expected a non-empty (N, H, W, C) array, got shape {shape}")
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(f"images: expected uint8 pixels (the network converts them), got {np.dtype(images.dtype)}")
    network.input_spec.check_images(np.zeros((1, *shape[1:]), np.uint8))
    return images


def _fingerprint(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        for leaf in jax.tree_util.tree_leaves(a):
            leaf = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
            h.update(leaf.tobytes())
    return h.hexdigest()[:16]


def _local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """The contiguous rows of a (B, ...) batch that this process's devices hold."""
    slices = [idx[0] for idx in sharding.addressable_devices_indices_map(shape).values()]
    lo, hi = min(s.start or 0 for s in slices), max(shape[0] if s.stop is None else s.stop for s in slices)
    return lo, hi


class _Blocks:
    """Process-local slices of the padded blocks of a dataset, as global sharded arrays."""

    def __init__(self, images: Any, batch: int, sharding: NamedSharding):
        self.images, self.batch, self.sharding = images, batch, sharding
        self.n = int(images.shape[0])
        self.lo, self.hi = _local_rows(sharding, (batch,))

    def rows(self, step: int) -> tuple[int, int]:
        """Global image indices [a, b) of this process's rows of block ``step`` (clipped to the dataset)."""
        start = step * self.batch
        return min(start + self.lo, self.n), min(start + self.hi, self.n)

    def local(self, step: int, values: np.ndarray | None = None) -> np.ndarray:
        """This process's rows of block ``step`` of ``values`` (default: the images), zero-padded."""
        a, b = self.rows(step)
        chunk = np.asarray(self.images[a:b] if values is None else values[a - step * self.batch:b - step * self.batch])
        pad = (self.hi - self.lo) - chunk.shape[0]
        return np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk

    def put(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.sharding, local, (self.batch, *local.shape[1:]))


def _fill_setting(fill: Any, fills: Any) -> Any:
    """How the fill is recorded in the settings: the string, the number, the values, or a fingerprint."""
    if isinstance(fill, str):
        return fill
    values = np.asarray(fill, np.float64)
    return values.tolist() if values.size <= 16 else _fingerprint(np.asarray(fills))


def _replicate(sharding: NamedSharding, tree: Any) -> Any:
    """A pytree of host values as arrays replicated on every device of every process."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # a typed PRNG key (RISE)
            data = put(np.asarray(jax.random.key_data(x)))
            return jax.jit(functools.partial(jax.random.wrap_key_data, impl=jax.random.key_impl(x)),
                           out_shardings=sharding)(data)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))

    return jax.tree_util.tree_map(put, tree)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated (or single-process) array on the host."""
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _write(array, index: Any, values: np.ndarray):
    try:
        return (array if index is None else array[index]).write(values)
    except Exception as e:
        raise store.RunStoreError(str(e)) from None


class _Writes:
    """Pending tensorstore writes, awaited together; I/O errors become ``RunStoreError``."""

    def __init__(self):
        self.futures = []

    def add(self, array, index: Any, values: np.ndarray) -> None:
        self.futures.append(_write(array, index, values))

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        for f in futures:
            try:
                f.result()
            except Exception as e:
                raise store.RunStoreError(str(e)) from None


def _top_k_merge(values: np.ndarray, index: np.ndarray, block: np.ndarray, start: int, k: int):
    """Running top-K per unit: the K largest of (values (K', U), block (b, U)), lower index first on ties."""
    cand_v = np.concatenate([values, block])
    cand_i = np.concatenate([index, np.broadcast_to(np.arange(start, start + len(block))[:, None], block.shape)])
    order = np.lexsort((cand_i, -cand_v), axis=0)[:k]  # by value descending, then by index
    return np.take_along_axis(cand_v, order, 0), np.take_along_axis(cand_i, order, 0)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_dataset(network: Network, images: Any, out: str | Path, *, method: str = "occlusion",
                layer: str | None = None, units: Any = None, window: Any = 8, stride: Any = 4,
                anchor: str = "centered", segments: int = 8, num_masks: int = 1000, cells: int = 7, p: float = 0.5,
                seed: int = 0, fill: Any = 0.0, k: int = 9, keep_grid: bool = False, images_per_step: int = 64,
                chunk_size: int | None = None, memory_budget: int | None = None, overwrite: bool = False,
                progress: bool = True) -> Run:
    """Run a perturbation method over every image of a dataset into the store ``out``.

    Args:
      network: the model (``jaxviz.Network``).
      images: uint8 (N, H, W, C) that can be sliced: a numpy array or memory
        map, a zarr / tensorstore / h5py array, or a ``jaxviz.Dataset``. Only
        blocks of ``images_per_step`` rows are read at a time.
      out: the run directory (created; a run already there with the same
        settings is resumed).
      method: ``"occlusion"``, ``"ablation"`` or ``"rise"`` (``jaxviz.runs.methods``).
      layer: the explained layer (default: the output layer); conv maps are
        averaged over space (``Network.score_fn``).
      units: indices of the layer's units to keep (default all), U of them.
      window, stride, anchor: occlusion, as in ``occlude``.
      segments: ablation: cells per side.
      num_masks, cells, p, seed: RISE, as in ``rise``.
      fill: a number, per-channel (C,) or image (H, W, C) values in model
        input space, or ``"blur"``.
      k: images per unit in the top-K mean maps (at most N).
      keep_grid: also write every map, (N, R, C, U) float32, one storage
        chunk per image.
      images_per_step: B, images per step (a padded multiple of the device
        count); a setting of the run (it fixes the order of the sums).
      chunk_size, memory_budget: (image, mask) pairs per device per call, as
        in ``occlude``.
      overwrite: replace a run made with other settings instead of refusing.
      progress: show a progress bar and the ETA (process 0 only).

    Returns:
      The finished ``Run`` (``open_run(out)``).

    Raises:
      TypeError / ValueError naming the argument, before any work; ValueError
      when ``out`` holds a run with other settings; ``RunStoreError`` (an
      ``OSError``) when writing fails: the steps already recorded stay valid.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network: expected a jaxviz.Network, got {type(network).__name__}")
    images = _check_source(images, network)
    n, h, w, c = (int(d) for d in images.shape)
    layer = network.output_layer if layer is None else layer
    network.check_layer(layer)
    f = network.score_fn(layer)
    width = probe(f, True, signature(network.variables), (h, w, c), network.input_spec.dtype)[0]
    if len(width) != 1:
        raise ValueError(f"layer: expected per-unit scores (N, units) from {layer!r}, got per-image shape {width}")
    units = None if units is None else unit_indices(units, width[0])
    kept = width[0] if units is None else len(units)
    if method not in RUN_METHODS:
        raise ValueError(f"method: expected one of {', '.join(RUN_METHODS)}, got {method!r}")
    family, map_shape, scale, options = method_family(method, (h, w, c), window=window, stride=stride,
                                                      anchor=anchor, segments=segments, num_masks=num_masks,
                                                      cells=cells, p=p, seed=seed)
    k = min(check_int(k, "k", 1), n)
    batch = check_int(images_per_step, "images_per_step", 1)
    keep_grid, overwrite = _check_bool(keep_grid, "keep_grid"), _check_bool(overwrite, "overwrite")
    head, tail = np.asarray(images[0:1]), np.asarray(images[n - 1:n])  # the only reads before the passes
    first = network.to_input(head)
    if isinstance(fill, np.ndarray) and fill.ndim == 4:
        raise ValueError("fill: per-image fills are not supported over a dataset; give a number, per-channel (C,) "
                         "or image (H, W, C) values, or 'blur'")
    fills, per_image_fill = _fill_array(fill, first, BLUR_SIGMA)
    classify = network.score_fn(network.output_layer) if network.is_classifier else None
    classes = len(network.class_names) if network.is_classifier else 0
    out = Path(out)

    settings = {"format": store.FORMAT, "method": method, **options, "layer": layer,
                "units": None if units is None else list(units), "k": k, "keep_grid": keep_grid,
                "fill": _fill_setting(fill, fills),
                "images_per_step": batch, "images": n, "image_shape": [h, w, c], "map_shape": list(map_shape),
                "masks_per_image": family.count, "classes": list(network.class_names or ()),
                "model": network.name or "", "model_fingerprint": _fingerprint(network.variables),
                "data_fingerprint": _fingerprint(head, tail)}
    settings = json.loads(json.dumps(settings))  # as read back from settings.json
    mesh_sharding = batch_sharding()
    mesh = mesh_sharding.mesh
    padded = round_up(batch, mesh.size)
    steps = math.ceil(n / batch)
    lead = jax.process_index() == 0

    # -- the store: create it, resume it, or refuse it
    previous = store.read_json(out / "settings.json")
    if previous is not None and previous != settings and not overwrite:
        differ = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        raise ValueError(f"out: {out} holds a run with other settings ({', '.join(differ)} differ); "
                         f"choose another directory or pass overwrite=True (--overwrite) to replace it")
    fresh = previous != settings
    if lead:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise store.RunStoreError(f"out: cannot create {out}: {e}") from None
        if fresh:
            store.clear(out)
            rows_chunk = (batch,)
            store.create_array(out, "base", (n, kept), np.float32, (batch, kept))
            store.create_array(out, "predicted", (n,), np.int32, rows_chunk)
            store.create_array(out, "max_drop", (n, kept), np.float32, (batch, kept))
            store.create_array(out, "max_drop_position", (n, kept, 2), np.int32, (batch, kept, 2))
            if keep_grid:
                store.create_array(out, "grid", (n, *map_shape, kept), np.float32, (1, *map_shape, kept),
                                   fill_value="NaN")
            store.write_json(out / "settings.json", settings)
    _barrier("jaxviz-run-store")
    arrays = {name: store.open_array(out, name) for name in ("base", "predicted", "max_drop", "max_drop_position")}
    grid = store.open_array(out, "grid") if keep_grid else None

    seq, record, corrupt = store.latest_record(out)
    if corrupt and lead:
        print(f"jaxviz: ignored corrupt completion record(s) {', '.join(p.name for p in corrupt)}; the steps they "
              f"covered are recomputed", file=sys.stderr)
    if record is None:
        record = {"phase": np.int32(1), "step": np.int32(0),
                  "topk_values": np.full((0, kept), -np.inf, np.float32), "topk_index": np.zeros((0, kept), np.int64),
                  "class_counts": np.zeros(max(classes, 1), np.int64)}
    phase, resumed_at = int(record["phase"]), (int(record["phase"]), int(record["step"]))
    if phase == 3:  # a finished run started again: nothing to do
        _barrier("jaxviz-run-finished")
        return open_run(out)
    blocks = _Blocks(images, padded, mesh_sharding)
    replicate = functools.partial(_replicate, NamedSharding(mesh, PartitionSpec()))
    params = replicate(network.variables)
    timing = {"read": 0.0, "compute": 0.0, "write": 0.0, "pass1": 0.0}
    started = time.perf_counter()
    writes = _Writes()

    def save(seq_no: int, state: dict) -> None:
        t = time.perf_counter()
        writes.wait()
        _barrier(f"jaxviz-run-step-{seq_no}")  # every process's rows are on disk before the record says so
        if lead:
            store.save_record(out, seq_no, state)
        timing["write"] += time.perf_counter() - t

    # -- pass 1: scores, predicted classes, top-K, class counts
    if phase == 1:
        t1 = time.perf_counter()
        program = base_program(f, units, classify, network.input_spec.to_input, mesh)
        state = {key: record[key] for key in ("topk_values", "topk_index", "class_counts")}
        with progress_bar(total=n, desc="scores", disable=not (progress and lead), unit="img",
                          initial=min(int(record["step"]) * batch, n)) as bar:
            for step in range(int(record["step"]), steps):
                start, stop = step * batch, min((step + 1) * batch, n)
                base, predicted = (_host(a)[:stop - start] for a in program(params, blocks.put(blocks.local(step))))
                if lead:
                    writes.add(arrays["base"], slice(start, stop), base)
                    writes.add(arrays["predicted"], slice(start, stop), predicted)
                values, index = _top_k_merge(state["topk_values"], state["topk_index"], base, start, k)
                counts = state["class_counts"] + np.bincount(predicted, minlength=len(state["class_counts"]))
                state = {"topk_values": values, "topk_index": index, "class_counts": counts}
                save(step + 1, {"phase": np.int32(1), "step": np.int32(step + 1), **state})
                bar.update(stop - start)
        record = {"phase": np.int32(2), "step": np.int32(0), **state,
                  "unit_sum": np.zeros((kept, math.prod(map_shape)), np.float32),
                  "class_sum": np.zeros((max(classes, 1), kept, math.prod(map_shape)), np.float32)}
        save(steps, record)
        timing["pass1"] = time.perf_counter() - t1
        phase = 2

    # -- pass 2: the maps and their aggregates, in one program per step
    topk_index, counts = record["topk_index"], record["class_counts"]
    if phase == 2:
        per_pair = (probe(f, True, signature(network.variables), (h, w, c), network.input_spec.dtype)[1]
                    + 2 * h * w * c * 4 + 4 * h * w + 4 * kept)
        per_device = (padded // mesh.size) * family.count
        sub = chunk_size_for(per_pair, per_device, 1, chunk_size, memory_budget, "(image, mask) pairs")
        spec = MapSpec(method, family.generate, family.count, tuple(map_shape), scale, sub)
        program = step_program(spec, f, units, network.input_spec.to_input, mesh, per_image_fill, keep_grid)
        data = replicate(family.data)
        shared_fill = None if per_image_fill else replicate(fills)
        predicted_all = arrays["predicted"]
        unit_sum, class_sum = record["unit_sum"], record["class_sum"]
        first_step = int(record["step"])

        def launch(step: int, unit_sum, class_sum):
            t = time.perf_counter()
            start = step * batch
            local = blocks.local(step)
            uw = np.zeros((padded, kept), np.float32)
            hit = (topk_index >= start) & (topk_index < min(start + batch, n))  # (K, U)
            uw[topk_index[hit] - start, np.nonzero(hit)[1]] = np.float32(1 / k)
            cw = np.zeros((padded, max(classes, 1)), np.float32)
            if classes:
                stop = min(start + batch, n)
                predicted = np.asarray(predicted_all[start:stop].read().result())
                cw[np.arange(stop - start), predicted] = (1 / np.maximum(counts, 1))[predicted]
            if per_image_fill:
                fill_arg = blocks.put(np.asarray(_fill_array("blur", network.to_input(local), BLUR_SIGMA)[0]))
            else:
                fill_arg = shared_fill
            timing["read"] += time.perf_counter() - t
            return program(params, blocks.put(local), fill_arg, data, blocks.put(blocks.local(step, uw)),
                           blocks.put(blocks.local(step, cw)), unit_sum, class_sum)

        pending = None
        with progress_bar(total=n, desc=f"{method} (process 0 of {jax.process_count()})",
                          disable=not (progress and lead), unit="img", initial=min(first_step * batch, n)) as bar:
            for step in [*range(first_step, steps), None]:
                sums = pending[1][:2] if pending else (replicate(unit_sum), replicate(class_sum))
                launched = None if step is None else launch(step, *sums)
                if pending is not None:  # finish the previous step while this one computes
                    done, outs = pending
                    t = time.perf_counter()
                    unit_sum, class_sum, _, peak, where = (_host(a) for a in outs[:5])
                    timing["compute"] += time.perf_counter() - t
                    t = time.perf_counter()
                    start, stop = done * batch, min((done + 1) * batch, n)
                    if lead:
                        writes.add(arrays["max_drop"], slice(start, stop), peak[:stop - start])
                        position = np.stack(np.unravel_index(where[:stop - start], map_shape), -1).astype(np.int32)
                        writes.add(arrays["max_drop_position"], slice(start, stop), position)
                    if keep_grid:
                        for shard in outs[5].addressable_shards:
                            a = start + (shard.index[0].start or 0)
                            b = min(a + shard.data.shape[0], n)
                            if b > a:
                                writes.add(grid, slice(a, b), np.asarray(shard.data)[:b - a])
                    timing["write"] += time.perf_counter() - t
                    save(steps + done + 1, {"phase": np.int32(2), "step": np.int32(done + 1), "topk_values":
                                            record["topk_values"], "topk_index": topk_index, "class_counts": counts,
                                            "unit_sum": unit_sum, "class_sum": class_sum})
                    bar.update(stop - start)
                pending = None if step is None else (step, launched)
        record = {**record, "unit_sum": unit_sum, "class_sum": class_sum}

    # -- the aggregates and the summary (process 0)
    if lead:
        t = time.perf_counter()
        u_sum = record["unit_sum"].reshape(kept, *map_shape)
        finals = {"unit_mean_map": u_sum, "topk_images": topk_index.T.copy(),
                  "topk_scores": record["topk_values"].T.copy()}
        if classes:
            finals["class_mean_map"] = record["class_sum"].reshape(classes, kept, *map_shape)
            finals["class_counts"] = counts
        for name, value in finals.items():
            writes.add(store.create_array(out, name, value.shape, value.dtype, value.shape), None, value)
        writes.wait()
        store.save_record(out, 2 * steps + 1, {"phase": np.int32(3), "step": np.int32(0)})
        timing["write"] += time.perf_counter() - t
    _barrier("jaxviz-run-done")
    if lead:
        _summarize(out, settings, timing, started, resumed_at, steps, batch, n, family.count, kept, map_shape,
                   keep_grid, mesh)
    _barrier("jaxviz-run-summary")
    return open_run(out)


def _summarize(out, settings, timing, started, resumed_at, steps, batch, n, count, kept, map_shape, keep_grid,
               mesh) -> None:
    phase, step = resumed_at
    images_done = n if phase == 1 else max(0, n - step * batch) if phase == 2 else 0
    seconds = time.perf_counter() - started
    pass2 = max(seconds - timing["pass1"], 1e-9)
    grid_bytes = images_done * math.prod(map_shape) * kept * 4 if keep_grid else 0
    summary = {
        "jaxviz": jaxviz.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
        "processes": jax.process_count(), "devices": mesh.size, "images": n, "steps": steps,
        "resumed_at": {"pass": phase, "step": step} if resumed_at != (1, 0) else None,
        "images_this_run": images_done, "forwards": images_done * (count + 1),
        "forwards_per_s": images_done * count / pass2 if images_done else None,
        "seconds": {"total": seconds, "pass1_scores": timing["pass1"], "read_and_prepare": timing["read"],
                    "waiting_for_compute": timing["compute"], "writing": timing["write"]},
        "grid_bytes": grid_bytes, "grid_MB_per_s": grid_bytes / 1e6 / pass2 if keep_grid else None,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "method": settings["method"], "masks_per_image": count,
    }
    store.write_json(out / "summary.json", summary)
