"""Planning a chunked computation: output shapes and memory per example, without running it.

The occlusion engine needs, before compiling anything, the shape of
``f``'s output and how many (image, position) pairs fit a memory budget. Both
come from one trace of ``f`` on abstract inputs (``jax.make_jaxpr``), cached
on the function and the shapes so a second call does not retrace. Memory per
example is the peak of the bytes held by live intermediate values when the
jaxpr's equations run in order, each value freed after its last use: an upper
bound on what XLA needs, since fusion only removes intermediates. (XLA's own
``memory_analysis`` was no help here: on XLA:CPU it reported 16 KB per
example for a CNN whose first activation alone is 128 KB.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
from jax.sharding import Sharding

from jaxviz._batching import round_up
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_positive_count

__all__ = ["abstract", "chunk_size_for", "default_memory_budget", "peak_live_bytes", "probe", "signature"]


def signature(tree: Any) -> tuple:
    """Hashable structure, shapes and dtypes of a pytree: a cache key that holds no data.

    A leaf's dtype is kept as JAX has it, so JAX's extended dtypes (the typed PRNG keys an nnx
    ``Rngs`` or ``Dropout`` holds) pass through; Python scalars get the dtype JAX gives them.

    Raises:
      TypeError: a leaf that is neither an array nor a scalar (e.g. a str).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(_leaf_signature(x) for x in leaves)


def _leaf_signature(x: Any) -> tuple[tuple[int, ...], Any]:
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # numpy and JAX arrays, ShapeDtypeStruct
        return tuple(x.shape), x.dtype
    try:
        aval = jax.typeof(x)
    except TypeError:
        raise ArgumentTypeError("params", f"expected a pytree of arrays, got a leaf of type {type(x).__name__}") from None
    return tuple(aval.shape), aval.dtype


def abstract(sig: tuple, sharding: Sharding | None = None) -> Any:
    """The pytree of ``jax.ShapeDtypeStruct`` that ``sig`` describes."""
    treedef, leaves = sig
    return jax.tree_util.tree_unflatten(
        treedef, [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in leaves])


def _nbytes(aval: Any) -> int:
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return math.prod(shape) * dtype.itemsize  # numpy dtypes and JAX's key dtypes alike


def peak_live_bytes(jaxpr: jex.Jaxpr) -> int:
    """Peak bytes of intermediate values alive at once when ``jaxpr`` runs in order.

    Inputs and constants are not counted (they exist before and after); a
    nested jaxpr (a jit, a custom-vjp call, ...) adds its own peak while its
    equation runs.
    """
    last_use: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jex.Var):
                last_use[v] = i
    for v in jaxpr.outvars:
        if isinstance(v, jex.Var):
            last_use[v] = len(jaxpr.eqns)
    live: dict = {}
    current = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((peak_live_bytes(getattr(sub, "jaxpr", sub)) for sub in jex.jaxprs_in_params(eqn.params)),
                    default=0)
        produced = {v: _nbytes(v.aval) for v in eqn.outvars if isinstance(v, jex.Var)}
        peak = max(peak, current + inner + sum(produced.values()))
        current += sum(produced.values())
        live.update(produced)
        for v in [*eqn.invars, *produced]:
            if isinstance(v, jex.Var) and v in live and last_use.get(v, i) <= i:
                current -= live.pop(v)
    return peak


@functools.lru_cache(maxsize=256)
def probe(f: Callable, with_params: bool, params_sig: tuple, image_shape: tuple[int, ...],
          dtype: Any) -> tuple[tuple[int, ...], int]:
    """``f``'s per-example output shape and peak working memory per example.

    Traces ``f`` once on a batch of 2 abstract images (cached: equal calls
    do not retrace) and checks that it keeps the batch axis.

    Returns:
      ``(out_shape, bytes_per_example)``.

    Raises:
      ValueError / TypeError naming ``f`` when it cannot be applied, returns
      something other than one array, or drops the batch axis.
    """
    x = jax.ShapeDtypeStruct((2, *image_shape), dtype)
    try:
        closed, out = jax.make_jaxpr(f if with_params else (lambda _, v: f(v)), return_shape=True)(
            abstract(params_sig) if with_params else None, x)
    except Exception as e:
        raise ArgumentError("f", f"could not be applied to a batch of shape {x.shape}: {e}") from e
    if not hasattr(out, "shape"):
        raise ArgumentTypeError("f", f"expected to return one array (N, ...), got {type(out).__name__}")
    if len(out.shape) < 1 or out.shape[0] != 2:
        raise ArgumentError("f", f"expected an output of shape (N, ...) for an input batch of N = 2 images, "
                         f"got shape {tuple(out.shape)}")
    return tuple(out.shape[1:]), -(-peak_live_bytes(closed.jaxpr) // 2)


def chunk_size_for(per_pair: int, pairs: int, shards: int, chunk_size: Any, memory_budget: Any,
                   what: str = "pairs") -> int:
    """Pairs per compiled call: ``chunk_size``, or as many as ``memory_budget`` holds at ``per_pair``
    bytes each, spread evenly over the chunks and rounded to a multiple of the device count."""
    chunk_size = check_positive_count(chunk_size, "chunk_size", what)
    memory_budget = check_positive_count(memory_budget, "memory_budget", "bytes")
    if chunk_size is None:
        budget = default_memory_budget(jax.default_backend()) if memory_budget is None else memory_budget
        chunk_size = max(1, budget // per_pair) * shards
    chunks = -(-pairs // chunk_size)
    return round_up(-(-pairs // chunks), shards)


def default_memory_budget(backend: str) -> int:
    """Bytes per device for one chunk's working set.

    On a 2-core CPU the fused engine's throughput plateaus from about 256
    pairs per chunk and does not rise beyond (benchmarks/results/
    chunk_size_cpu.json), so a small budget keeps memory low at no cost;
    accelerators want the largest batch that fits.
    """
    return (128 << 20) if backend == "cpu" else (2 << 30)
