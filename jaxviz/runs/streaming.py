"""Host and device plumbing of a dataset run: process-local blocks, replicated state, pending writes, barriers."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxviz.runs import store

__all__ = ["Blocks", "Rows", "Writes", "barrier", "host", "replicate", "top_k_merge"]


def _local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """The contiguous rows of a (B, ...) batch that this process's devices hold."""
    slices = [idx[0] for idx in sharding.addressable_devices_indices_map(shape).values()]
    lo, hi = min(s.start or 0 for s in slices), max(shape[0] if s.stop is None else s.stop for s in slices)
    return lo, hi


class Blocks:
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
        if b <= a:  # this process's rows are all padding: read nothing
            like = self.images[0:1] if values is None else values[:1]
            return np.zeros((self.hi - self.lo, *np.shape(like)[1:]), np.asarray(like).dtype)
        chunk = np.asarray(self.images[a:b] if values is None else values[a - step * self.batch:b - step * self.batch])
        pad = (self.hi - self.lo) - chunk.shape[0]
        return np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk

    def put(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.sharding, local, (self.batch, *local.shape[1:]))


class Rows:
    """Rows ``index`` of a sliceable (N, H, W, C) array, sliceable in turn (a dataset run reads blocks of it);
    a numpy source is indexed at once, any other (memory map, zarr, tensorstore) read row by row."""

    def __init__(self, images: Any, index: np.ndarray):
        self.source, self.index = images, np.asarray(index, np.int64)  # not .images: a run takes that for a Dataset
        self.shape = (len(self.index), *tuple(int(d) for d in images.shape[1:]))
        self.dtype = images.dtype

    def __getitem__(self, key: slice) -> np.ndarray:
        rows = self.index[key]
        if isinstance(self.source, np.ndarray):
            return self.source[rows]
        return np.stack([np.asarray(self.source[int(i):int(i) + 1])[0] for i in rows]) if len(rows) else \
            np.zeros((0, *self.shape[1:]), self.dtype)


def replicate(sharding: NamedSharding, tree: Any) -> Any:
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


def host(x: jax.Array) -> np.ndarray:
    """A replicated (or single-process) array on the host."""
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


class Writes:
    """Pending tensorstore writes, awaited together; I/O errors (when a write starts or ends) become
    ``RunStoreError``."""

    def __init__(self):
        self.futures = []

    def add(self, array, index: Any, values: np.ndarray) -> None:
        with _as_store_error():
            self.futures.append((array if index is None else array[index]).write(values))

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        with _as_store_error():
            for f in futures:
                f.result()


@contextlib.contextmanager
def _as_store_error():
    try:
        yield
    except Exception as e:  # tensorstore reports I/O failures as ValueError
        raise store.RunStoreError(f"could not write the run's arrays: {e}") from None


def top_k_merge(values: np.ndarray, index: np.ndarray, block: np.ndarray, start: int, k: int):
    """Running top-K per unit: the K largest of (values (K', U), block (b, U)), lower index first on ties."""
    cand_v = np.concatenate([values, block])
    cand_i = np.concatenate([index, np.broadcast_to(np.arange(start, start + len(block))[:, None], block.shape)])
    order = np.lexsort((cand_i, -cand_v), axis=0)[:k]  # by value descending, then by index
    return np.take_along_axis(cand_v, order, 0), np.take_along_axis(cand_i, order, 0)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
