"""The two passes of a dataset run, each step recorded, and the final aggregates (see ``dataset_run``).

Completion records are numbered so that a later one always sorts after an
earlier one: pass 1 names its record after the next step (1 .. S), pass 2
after S + the next step (S .. 2S), the final record is 2S + 1.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxviz._progress import progress_bar
from jaxviz._version import __version__
from jaxviz.engine.inputs import fill_array
from jaxviz.engine.perturb import BLUR_SIGMA, MaskFamily
from jaxviz.models.network import Network
from jaxviz.runs import store
from jaxviz.runs.program import MapSpec, base_program, step_program
from jaxviz.runs.streaming import Blocks, Writes, barrier, host, replicate, top_k_merge

__all__ = ["Job", "execute", "first_record"]


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a run needs, checked (``run_dataset`` builds it)."""

    network: Network
    images: Any  # uint8 (N, H, W, C), sliceable
    out: Path
    f: Any  # network.score_fn(layer)
    units: tuple[int, ...] | None
    kept: int  # U
    classify: Any  # the output layer's scores, or None
    classes: int  # K (0: no classes)
    family: MaskFamily
    spec: MapSpec
    fills: Any
    per_image_fill: bool
    k: int
    batch: int  # B
    keep_grid: bool
    mesh: Mesh
    progress: bool
    settings: dict

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def steps(self) -> int:
        return math.ceil(self.n / self.batch)

    @property
    def padded(self) -> int:
        return -(-self.batch // self.mesh.size) * self.mesh.size

    @property
    def positions(self) -> int:
        return math.prod(self.spec.map_shape)

    @property
    def lead(self) -> bool:
        return jax.process_index() == 0


def first_record(job: Job) -> dict[str, np.ndarray]:
    """The state before any step."""
    return {"phase": np.int32(1), "step": np.int32(0), "topk_values": np.zeros((0, job.kept), np.float32),
            "topk_index": np.zeros((0, job.kept), np.int64), "class_counts": np.zeros(max(job.classes, 1), np.int64)}


class _Runner:
    def __init__(self, job: Job):
        self.job = job
        self.blocks = Blocks(job.images, job.padded, NamedSharding(job.mesh, PartitionSpec("batch")))
        self.replicate = lambda tree: replicate(NamedSharding(job.mesh, PartitionSpec()), tree)
        self.params = self.replicate(job.network.variables)
        self.arrays = {name: store.open_array(job.out, name)
                       for name in ("base", "predicted", "max_drop", "max_drop_position")}
        self.grid = store.open_array(job.out, "grid") if job.keep_grid else None
        self.writes = Writes()
        self.timing = {"pass1_scores": 0.0, "read_and_prepare": 0.0, "waiting_for_compute": 0.0, "writing": 0.0,
                       "waiting_for_other_processes": 0.0}

    def save(self, seq: int, state: dict, *, everyone: bool = False) -> None:
        """Wait for this step's writes, then record the step (process 0). With ``everyone`` (the other processes
        wrote rows of the grid) process 0 first waits for theirs too."""
        t = time.perf_counter()
        self.writes.wait()
        self.timing["writing"] += time.perf_counter() - t
        if everyone:
            t = time.perf_counter()
            barrier(f"jaxviz-run-record-{seq}")
            self.timing["waiting_for_other_processes"] += time.perf_counter() - t
        t = time.perf_counter()
        if self.job.lead:
            store.save_record(self.job.out, seq, state)
        self.timing["writing"] += time.perf_counter() - t

    def bar(self, desc: str, step: int):
        job = self.job
        return progress_bar(total=job.n, desc=desc, disable=not (job.progress and job.lead), unit="img",
                            initial=min(step * job.batch, job.n))

    # -- pass 1: scores, predicted classes, the running top-K and class counts
    def pass1(self, record: dict) -> dict:
        job, t1 = self.job, time.perf_counter()
        program = base_program(job.f, job.units, job.classify, job.network.input_spec.to_input, job.mesh)
        state = {key: record[key] for key in ("topk_values", "topk_index", "class_counts")}
        with self.bar("scores", int(record["step"])) as bar:
            for step in range(int(record["step"]), job.steps):
                start, stop = step * job.batch, min((step + 1) * job.batch, job.n)
                outs = program(self.params, self.blocks.put(self.blocks.local(step)))
                base, predicted = (host(a)[:stop - start] for a in outs)
                if job.lead:
                    self.writes.add(self.arrays["base"], slice(start, stop), base)
                    self.writes.add(self.arrays["predicted"], slice(start, stop), predicted)
                values, index = top_k_merge(state["topk_values"], state["topk_index"], base, start, job.k)
                counts = state["class_counts"] + np.bincount(predicted, minlength=len(state["class_counts"]))
                state = {"topk_values": values, "topk_index": index, "class_counts": counts}
                self.save(step + 1, {"phase": np.int32(1), "step": np.int32(step + 1), **state})
                bar.update(stop - start)
        record = {"phase": np.int32(2), "step": np.int32(0), **state,
                  "unit_sum": np.zeros((job.kept, job.positions), np.float32),
                  "class_sum": np.zeros((max(job.classes, 1), job.kept, job.positions), np.float32)}
        self.save(job.steps, record, everyone=True)  # pass 2 reads pass 1's rows on every process
        self.timing["pass1_scores"] = time.perf_counter() - t1
        return record

    # -- pass 2: the maps and their aggregates, one program per step, the next step computing while one is written
    def _block_inputs(self, step: int, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block ``step``'s scores from pass 1 (padded to the block) and per-image weights: 1/k where the image
        is among a unit's top k, and 1/count of its predicted class."""
        job = self.job
        start, stop = step * job.batch, min((step + 1) * job.batch, job.n)
        topk = record["topk_index"]
        unit_weight = np.zeros((job.padded, job.kept), np.float32)
        hit = (topk >= start) & (topk < stop)  # (k, U)
        unit_weight[topk[hit] - start, np.nonzero(hit)[1]] = np.float32(1 / job.k)
        base = np.zeros((job.padded, job.kept), np.float32)
        base[:stop - start] = np.asarray(self.arrays["base"][start:stop].read().result())
        class_weight = np.zeros((job.padded, max(job.classes, 1)), np.float32)
        if job.classes:
            predicted = np.asarray(self.arrays["predicted"][start:stop].read().result())
            class_weight[np.arange(stop - start), predicted] = (1 / np.maximum(record["class_counts"], 1))[predicted]
        return base, unit_weight, class_weight

    def _launch(self, program, step: int, record: dict, sums: tuple):
        job, blocks, t = self.job, self.blocks, time.perf_counter()
        local = blocks.local(step)
        if job.per_image_fill:  # blur, per block
            fills = blocks.put(np.asarray(fill_array("blur", job.network.to_input(local), BLUR_SIGMA)[0]))
        else:
            fills = self.shared_fill
        base, unit_weight, class_weight = (blocks.put(blocks.local(step, a)) for a in self._block_inputs(step, record))
        self.timing["read_and_prepare"] += time.perf_counter() - t
        return program(self.params, blocks.put(local), base, fills, self.mask_data, unit_weight, class_weight, *sums)

    def _store_step(self, step: int, outs: tuple, record: dict) -> dict:
        job = self.job
        t = time.perf_counter()
        unit_sum, class_sum, peak, where = (host(a) for a in outs[:4])
        self.timing["waiting_for_compute"] += time.perf_counter() - t
        t = time.perf_counter()
        start, stop = step * job.batch, min((step + 1) * job.batch, job.n)
        if job.lead:
            self.writes.add(self.arrays["max_drop"], slice(start, stop), peak[:stop - start])
            position = np.stack(np.unravel_index(where[:stop - start], job.spec.map_shape), -1).astype(np.int32)
            self.writes.add(self.arrays["max_drop_position"], slice(start, stop), position)
        if job.keep_grid:  # each process writes its own rows, whole storage chunks (one image each)
            for shard in outs[4].addressable_shards:
                a = start + (shard.index[0].start or 0)
                b = min(a + shard.data.shape[0], job.n)
                if b > a:
                    self.writes.add(self.grid, slice(a, b), np.asarray(shard.data)[:b - a])
        self.timing["writing"] += time.perf_counter() - t
        record = {**record, "phase": np.int32(2), "step": np.int32(step + 1), "unit_sum": unit_sum,
                  "class_sum": class_sum}
        self.save(job.steps + step + 1, record, everyone=job.keep_grid and jax.process_count() > 1)
        return record

    def pass2(self, record: dict) -> dict:
        job = self.job
        program = step_program(job.spec, job.f, job.units, job.network.input_spec.to_input, job.mesh,
                               job.per_image_fill, job.keep_grid)
        self.mask_data = self.replicate(job.family.data)
        self.shared_fill = None if job.per_image_fill else self.replicate(job.fills)
        first = int(record["step"])
        pending = None
        processes = jax.process_count()
        with self.bar(job.spec.method + (f" ({processes} processes)" if processes > 1 else ""), first) as bar:
            for step in [*range(first, job.steps), None]:
                if step is not None:
                    sums = pending[1][:2] if pending else (self.replicate(record["unit_sum"]),
                                                           self.replicate(record["class_sum"]))
                    launched = (step, self._launch(program, step, record, sums))
                if pending is not None:  # finish the previous step while this one computes
                    record = self._store_step(*pending, record)
                    bar.update(min(job.batch, job.n - pending[0] * job.batch))
                pending = launched if step is not None else None
        return record

    # -- the aggregates (process 0) and the final record
    def finish(self, record: dict) -> None:
        job = self.job
        if job.lead:
            finals = {"unit_mean_map": record["unit_sum"].reshape(job.kept, *job.spec.map_shape),
                      "topk_images": record["topk_index"].T.copy(), "topk_scores": record["topk_values"].T.copy()}
            if job.classes:
                finals["class_mean_map"] = record["class_sum"].reshape(job.classes, job.kept, *job.spec.map_shape)
                finals["class_counts"] = record["class_counts"]
            for name, value in finals.items():
                self.writes.add(store.create_array(job.out, name, value.shape, value.dtype, value.shape), None, value)
        self.save(2 * job.steps + 1, {"phase": np.int32(3), "step": np.int32(0)})


def execute(job: Job, record: dict) -> None:
    """Run from ``record`` to the end; process 0 writes ``summary.json``."""
    runner, started = _Runner(job), time.perf_counter()
    resumed = (int(record["phase"]), int(record["step"]))
    if resumed[0] == 1:
        record = runner.pass1(record)
    t2 = time.perf_counter()
    record = runner.pass2(record)
    pass2 = time.perf_counter() - t2
    runner.finish(record)
    if job.lead:
        phase, step = resumed
        done = job.n - (step * job.batch if phase == 2 else 0)
        forwards = done * job.family.count
        grid_bytes = done * job.positions * job.kept * 4 if job.keep_grid else 0
        store.write_json(job.out / "summary.json", {
            "jaxviz": __version__, "jax": jax.__version__, "backend": jax.default_backend(),
            "processes": jax.process_count(), "devices": job.mesh.size, "images": job.n, "steps": job.steps,
            "method": job.spec.method, "masks_per_image": job.family.count,
            "images_per_step": job.batch, "pairs_per_call": job.spec.sub_chunk,
            "resumed_at": None if resumed == (1, 0) else {"pass": phase, "step": step},
            "images_this_run": done, "forwards": forwards,
            "forwards_per_s": forwards / pass2 if forwards else None,
            "seconds": {"total": time.perf_counter() - started, "pass2": pass2,
                        **{k: round(v, 6) for k, v in runner.timing.items()}},
            "grid_bytes": grid_bytes, "grid_MB_per_s": grid_bytes / 1e6 / pass2 if job.keep_grid and pass2 else None,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    barrier("jaxviz-run-summary")
