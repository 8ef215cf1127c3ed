"""Kernel gradient of a 3x3 convolution: XLA's own vs nine matrix products (jaxviz.model.conv3x3).

    python -m benchmarks.conv_grad

Claim: on XLA:CPU the nine-matmul kernel gradient is faster than XLA's for the
layers of the jaxviz CNN where most training time goes, and a full training
step of the CNN is faster with it. Batch 128 (the training batch), median of
7 timed calls after a warm-up. Writes benchmarks/results/conv_grad_<backend>.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from benchmarks._env import environment
from jaxviz.model import CNN, _conv3x3_bwd, _conv_same, init_variables

LAYERS = [(32, 3, 32), (32, 32, 32), (16, 32, 64), (16, 64, 64), (8, 64, 128), (8, 128, 128)]  # (size, in, out)
BATCH = 128


def median_time(fn, *args, repeats: int = 7) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_rows() -> list[dict]:
    rows = []
    for size, cin, cout in LAYERS:
        x = jax.random.normal(jax.random.key(0), (BATCH, size, size, cin))
        k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
        ct = jax.random.normal(jax.random.key(2), (BATCH, size, size, cout))
        xla = jax.jit(lambda x, k, ct: jax.vjp(_conv_same, x, k)[1](ct)[1])
        ours = jax.jit(lambda x, k, ct: _conv3x3_bwd((x, k), ct)[1])
        err = float(jnp.abs(xla(x, k, ct) - ours(x, k, ct)).max() / jnp.abs(xla(x, k, ct)).max())
        t_xla, t_ours = median_time(xla, x, k, ct), median_time(ours, x, k, ct)
        rows.append({"size": size, "in": cin, "out": cout, "xla_kernel_grad_s": t_xla, "matmul_kernel_grad_s": t_ours,
                     "speedup": t_xla / t_ours, "max_relative_difference": err})
        print(rows[-1], flush=True)
    return rows


def train_step_seconds(use_custom: bool) -> float:
    """One SGD step of the CNN on a batch; use_custom=False swaps in XLA's kernel gradient."""
    import jaxviz.model as m

    model = CNN()
    variables = init_variables(model, jax.random.key(0))
    tx = optax.sgd(0.1, 0.9)
    opt = tx.init(variables["params"])
    x = jax.random.uniform(jax.random.key(1), (BATCH, 32, 32, 3))
    y = jnp.zeros(BATCH, jnp.int32)
    original = m.conv3x3
    if not use_custom:
        m.conv3x3 = _conv_same  # plain autodiff through lax.conv
    try:
        @jax.jit
        def step(params, stats, opt, key):
            def loss(p):
                out, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": key})
                return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd
            (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
            u, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, u), upd["batch_stats"], opt, l

        return median_time(step, variables["params"], variables["batch_stats"], opt, jax.random.key(2))
    finally:
        m.conv3x3 = original


def main() -> None:
    rows = layer_rows()
    custom, xla = train_step_seconds(True), train_step_seconds(False)
    record = {"claim": "nine-matmul kernel gradient beats XLA:CPU's on the CNN's 16x16 and 32x32 layers",
              "batch": BATCH, "layers": rows,
              "train_step_seconds": {"matmul_kernel_grad": custom, "xla_kernel_grad": xla, "speedup": xla / custom},
              "environment": environment(), "command": "python -m benchmarks.conv_grad"}
    out = Path(__file__).resolve().parent / "results" / f"conv_grad_{jax.default_backend()}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["train_step_seconds"]))


if __name__ == "__main__":
    main()
