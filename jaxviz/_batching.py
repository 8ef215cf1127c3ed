"""Run a jitted function over a large array in fixed-size, padded batches.

Every batch has the same shape (the last one is padded and its padding
dropped), so ``fn`` compiles once. Batches are sharded over all local
devices along the batch axis, so several GPUs or TPU cores share the work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError

__all__ = ["batch_sharding", "map_batches", "round_up", "to_host"]


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def to_host(x: jax.Array) -> np.ndarray:
    """``x`` as a numpy array; in a multi-host run, gathered from every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.cache
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices), ("batch",))


def batch_sharding(devices: tuple | None = None) -> NamedSharding:
    """A sharding that splits axis 0 over ``devices`` (default: all devices)."""
    devices = tuple(jax.devices()) if devices is None else tuple(devices)
    return NamedSharding(_mesh(devices), PartitionSpec("batch"))


def map_batches(
    fn: Callable[[jax.Array], jax.Array],
    inputs: np.ndarray,
    *,
    batch_size: int = 500,
    progress: bool | str = False,
    devices: tuple | None = None,
) -> np.ndarray:
    """``fn`` applied to ``inputs`` in batches, results concatenated on the host.

    Args:
      fn: a jitted function (B, ...) -> (B, ...); it sees only full batches.
      inputs: (N, ...) host array; converted batch by batch.
      batch_size: rows per call, rounded up to a multiple of the device count.
      progress: show a progress bar (a string is used as its label).
      devices: devices to shard over (default: ``jax.devices()``).

    Returns:
      numpy array (N, ...), the per-row results in input order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError("batch_size", f"expected a positive int, got {batch_size!r}")
    n = int(inputs.shape[0])
    if n == 0:
        raise ArgumentError("inputs", "expected at least one row, got an empty array")
    sharding = batch_sharding(devices)
    batch_size = round_up(min(batch_size, n), sharding.mesh.size)
    outputs = []
    label = progress if isinstance(progress, str) else "batches"
    with progress_bar(total=n, desc=label, disable=not progress, unit="img") as bar:
        for start in range(0, n, batch_size):
            chunk = np.asarray(inputs[start:start + batch_size])
            rows = chunk.shape[0]
            if rows < batch_size:  # pad so the shape, and the compiled program, stay the same
                pad = np.zeros((batch_size - rows, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out = fn(jax.device_put(chunk, sharding))
            outputs.append(to_host(out)[:rows])
            bar.update(rows)
    return np.concatenate(outputs)
