"""Chunk planning: peak live memory of a traced function, and chunk sizes from a budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.engine.plan import default_memory_budget, peak_live_bytes, probe, signature

from numerics import assert_close


def test_peak_live_bytes_of_a_chain_by_hand():
    # cos(x) is alive while sin(.) is produced; then cos(x) is freed: peak = 2 arrays of 100 float32
    jaxpr = jax.make_jaxpr(lambda x: jnp.sin(jnp.cos(x)))(jnp.zeros((1, 100))).jaxpr
    assert peak_live_bytes(jaxpr) == 2 * 100 * 4


def test_peak_live_bytes_keeps_values_used_later():
    # a = cos(x) stays alive until the final add: a, b = sin(a), c = exp(b) -> 3 arrays at once
    def f(x):
        a = jnp.cos(x)
        return jnp.exp(jnp.sin(a)) + a

    jaxpr = jax.make_jaxpr(f)(jnp.zeros((10,))).jaxpr
    assert peak_live_bytes(jaxpr) == 3 * 10 * 4


def test_peak_live_bytes_counts_nested_jaxprs():
    inner = jax.jit(lambda x: jnp.sin(jnp.cos(x)))
    jaxpr = jax.make_jaxpr(lambda x: inner(x) * 2)(jnp.zeros((50,))).jaxpr
    # While the inner jit runs, its own peak (cos and sin alive: 2 arrays) is added to its
    # output's bytes: 3 arrays of 50 float32. Ignoring the nested jaxpr would give 2 arrays
    # (the jit's output and the product).
    assert peak_live_bytes(jaxpr) == 3 * 50 * 4


def test_probe_is_cached_and_checks_the_batch_axis():
    traces = []

    def f(x):
        traces.append(1)
        return x.reshape(x.shape[0], -1)[:, :5]

    first = probe(f, False, signature(None), (8, 8, 3), np.dtype(np.float32))
    again = probe(f, False, signature(None), (8, 8, 3), np.dtype(np.float32))
    assert first == again and first[0] == (5,) and len(traces) == 1
    with pytest.raises(ValueError, match="f: expected an output of shape"):
        probe(lambda x: x.sum(), False, signature(None), (8, 8, 3), np.dtype(np.float32))


def test_chunk_size_follows_the_memory_budget():
    x = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(16 * 16 * 3, 4)), jnp.float32)

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w)

    _, example = probe(f, False, signature(None), (16, 16, 3), np.dtype(np.float32))
    per_pair = example + 2 * 16 * 16 * 3 * 4 + 4 * 16 * 16 + 4 * 4  # + the (H, W) mask and the output
    small = jaxviz.occlude(f, x, window=4, stride=4, memory_budget=5 * per_pair)
    assert small.chunk_size == 5
    whole = jaxviz.occlude(f, x, window=4, stride=4, memory_budget=1 << 30)
    assert whole.chunk_size == 3 * 16  # every pair in one chunk
    assert_close(small.grid, whole.grid, scale=whole.base)  # different chunk programs


def test_default_budgets():
    assert default_memory_budget("cpu") < default_memory_budget("gpu") == default_memory_budget("tpu")
