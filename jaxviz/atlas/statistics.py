"""The atlas's pass over the whole dataset: every chosen layer's unit scores, reduced on the device, recorded.

One compiled program per step takes a block of images sharded over every
device of every process (the run machinery's ``Blocks`` and ``shard_map``
over one ``"batch"`` axis), evaluates every layer's ``Network.score_fn`` from
one forward pass each, and returns, ``psum``-ed over devices:

* the scores of the block (gathered: the host keeps a running top-K per unit,
  ``top_k_merge``, ties to the lower index as a stable sort);
* the sum of the scores, the sum of the outer products (U, U) of the scores
  minus a shift (the first block's mean: without it the float32 products of
  units whose mean dwarfs their spread lose the covariance to cancellation)
  and the sums over the images of each true class (K, U): the correlation of
  every pair of units and the class-conditional means, without ever holding
  (N, U).

The host adds the block sums in float64. After every step process 0 writes a
completion record (``store.save_record``: atomic, checksummed), so a killed
pass resumes after the last recorded step and ends with the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxviz._progress import progress_bar
from jaxviz.models.network import Network
from jaxviz.runs import store
from jaxviz.runs.streaming import Blocks, barrier, host, replicate, top_k_merge

__all__ = ["LayerStatistics", "dataset_statistics", "statistics_program"]


@dataclasses.dataclass(frozen=True)
class LayerStatistics:
    """One layer's unit scores (``Network.score_fn``: conv maps averaged over space) summed over a dataset.

    Attributes:
      layer: the layer.
      images: N, the images summed over.
      topk_index: int64 (k, U): each unit's top-k images, best first (ties: the lower index).
      topk_values: float32 (k, U): their scores.
      class_sum: float64 (K, U): the sum of each unit's scores over the images of each true class.
      class_count: int64 (K,): images per true class.
      total: float64 (U,): the sum of each unit's scores.
      shift: float64 (U,): subtracted from the scores in ``cross`` (the mean of the first block's scores).
      cross: float64 (U, U): the sum over the images of the outer product of the scores minus ``shift``.
      predicted: int32 (N,): the class the network predicts for each image (0 without classes).
    """

    layer: str
    images: int
    topk_index: np.ndarray
    topk_values: np.ndarray
    class_sum: np.ndarray
    class_count: np.ndarray
    total: np.ndarray
    shift: np.ndarray
    cross: np.ndarray
    predicted: np.ndarray

    @property
    def class_means(self) -> np.ndarray:
        """float64 (K, U): each unit's mean score over the images of each class (NaN for a class without images)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_sum / self.class_count[:, None]

    @property
    def mean(self) -> np.ndarray:
        """float64 (U,): each unit's mean score."""
        return self.total / self.images

    def correlation(self) -> np.ndarray:
        """float64 (U, U): the Pearson correlation of every pair of units over the images (``np.corrcoef`` of the
        scores); NaN where a unit is constant (a dead unit)."""
        n, mean = self.images, self.mean - self.shift
        covariance = (self.cross - n * np.outer(mean, mean)) / max(n - 1, 1)
        std = np.sqrt(np.clip(np.diag(covariance), 0, None))
        scale = np.outer(std, std)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, covariance / scale, np.nan)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LayerStatistics:
        values = {f.name: arrays[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "layer": str(values["layer"]), "images": int(values["images"])})


@functools.lru_cache(maxsize=16)
def statistics_program(fs: tuple[Callable, ...], classify: Callable | None, to_input: Callable, mesh: Mesh,
                       num_classes: int) -> Callable:
    """``(params, images uint8 (B, H, W, C), labels int32 (B,), valid float32 (B,), shifts (per layer (U,)))
    -> (predicted (B,), *per layer (scores (B, U), total (U,), cross (U, U), class_sum (K, U)))``, replicated;
    ``cross`` sums the outer products of the scores minus the layer's shift; the padded rows (``valid`` 0) count
    in no sum."""

    def local(params, images, labels, valid, shifts):
        x = to_input(images)
        onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * valid[:, None]
        predicted = (jnp.zeros(x.shape[0], jnp.int32) if classify is None
                     else jnp.argmax(classify(params, x), axis=-1).astype(jnp.int32))
        outs = [jax.lax.all_gather(predicted, "batch", tiled=True)]
        for f, shift in zip(fs, shifts):
            scores = f(params, x).astype(jnp.float32)
            kept = scores * valid[:, None]
            centred = (scores - shift) * valid[:, None]
            outs += [jax.lax.all_gather(scores, "batch", tiled=True), jax.lax.psum(kept.sum(0), "batch"),
                     jax.lax.psum(jnp.einsum("bu,bv->uv", centred, centred, precision="highest"), "batch"),
                     jax.lax.psum(jnp.einsum("bk,bu->ku", onehot, scores, precision="highest"), "batch")]
        return tuple(outs)

    out_specs = (P(), *(P(),) * (4 * len(fs)))
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch"), P("batch"), P("batch"), P()),
                                 out_specs=out_specs, check_vma=False))


def _first_state(widths: dict[str, int], classes: int, n: int) -> dict[str, np.ndarray]:
    state = {"step": np.int64(0), "predicted": np.zeros(n, np.int32)}
    for i, width in enumerate(widths.values()):
        state |= {f"{i}.topk_values": np.zeros((0, width), np.float32), f"{i}.topk_index": np.zeros((0, width), np.int64),
                  f"{i}.total": np.zeros(width), f"{i}.cross": np.zeros((width, width)), f"{i}.shift": np.zeros(width),
                  f"{i}.class_sum": np.zeros((classes, width))}
    return state


def _run(program, params, inputs, state, layers: int, mesh: Mesh) -> list[np.ndarray]:
    shifts = replicate(NamedSharding(mesh, P()), [state[f"{i}.shift"].astype(np.float32) for i in range(layers)])
    return [host(a) for a in program(params, *inputs, shifts)]


def dataset_statistics(network: Network, images: Any, labels: np.ndarray, num_classes: int, layers: tuple[str, ...],
                       *, k: int, folder: Path, images_per_step: int, mesh: Mesh,
                       progress: bool = True) -> dict[str, LayerStatistics]:
    """Stream ``images`` once and sum every layer's scores (checked arguments; ``build_atlas`` calls it).

    Args:
      network: the model.
      images: uint8 (N, H, W, C), sliceable (only blocks are read).
      labels: int (N,) in [0, num_classes).
      layers: the layers, each with per-unit scores.
      k: images per unit in the top-K (at most N).
      folder: where the completion records go (``folder/records``); a record there from the same pass (the caller
        names the folder after every setting) is resumed from.
      images_per_step: images per step (a multiple of the device count after padding).
      mesh: the devices of every process (one ``"batch"`` axis).
      progress: a progress bar with the ETA (process 0).
    """
    n = int(images.shape[0])
    widths = {layer: network.num_units(layer) for layer in layers}
    batch = -(-min(images_per_step, n) // mesh.size) * mesh.size
    steps = -(-n // batch)
    sharding = NamedSharding(mesh, P("batch"))
    blocks = Blocks(images, batch, sharding)
    labels = np.asarray(labels, np.int32)
    program = statistics_program(tuple(network.score_fn(layer) for layer in layers),
                                 network.score_fn(network.output_layer) if network.is_classifier else None,
                                 network.input_spec.to_input, mesh, num_classes)
    params = replicate(NamedSharding(mesh, P()), network.variables)
    _, state, _ = store.latest_record(folder)
    state = _first_state(widths, num_classes, n) if state is None else state
    lead = jax.process_index() == 0
    with progress_bar(total=n, desc="statistics", disable=not (progress and lead), unit="img",
                      initial=min(int(state["step"]) * batch, n)) as bar:
        for step in range(int(state["step"]), steps):
            start, stop = step * batch, min((step + 1) * batch, n)
            valid = np.zeros(batch, np.float32)
            valid[:stop - start] = 1
            block_labels = np.zeros(batch, np.int32)
            block_labels[:stop - start] = labels[start:stop]
            inputs = [blocks.put(blocks.local(step, a)) for a in (None, block_labels, valid)]
            outs = _run(program, params, inputs, state, len(layers), mesh)
            if step == 0:  # the shifts: the first block's means, then the block again with them
                state = {**state, **{f"{i}.shift": outs[1 + 4 * i][:stop - start].mean(0).astype(np.float64)
                                     for i in range(len(layers))}}
                outs = _run(program, params, inputs, state, len(layers), mesh)
            state = {**state, "step": np.int64(step + 1)}
            state["predicted"] = state["predicted"].copy()
            state["predicted"][start:stop] = outs[0][:stop - start]
            for i in range(len(layers)):
                scores, total, cross, class_sum = outs[1 + 4 * i:5 + 4 * i]
                values, index = top_k_merge(state[f"{i}.topk_values"], state[f"{i}.topk_index"],
                                            scores[:stop - start], start, k)
                state |= {f"{i}.topk_values": values, f"{i}.topk_index": index,
                          f"{i}.total": state[f"{i}.total"] + total, f"{i}.cross": state[f"{i}.cross"] + cross,
                          f"{i}.class_sum": state[f"{i}.class_sum"] + class_sum}
            if lead:
                store.save_record(folder, step + 1, state)
            bar.update(stop - start)
    barrier("jaxviz-atlas-statistics")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    return {layer: LayerStatistics(layer, n, state[f"{i}.topk_index"].astype(np.int64),
                                   state[f"{i}.topk_values"].astype(np.float32), state[f"{i}.class_sum"], counts,
                                   state[f"{i}.total"], state[f"{i}.shift"], state[f"{i}.cross"], state["predicted"])
            for i, layer in enumerate(layers)}
