"""Should the CNN's 3x3 convolutions compute their kernel gradient as nine matrix products?

    python -m benchmarks.conv_grad

An early, noisy measurement suggested XLA:CPU's kernel-gradient convolution
was slow, and the shipped weights were trained with a ``custom_vjp`` that
computes it as nine (C, N*H*W) @ (N*H*W, O) products, one per kernel tap.
This benchmark decides whether the model should keep it: it times both
kernel gradients per layer and a whole training step of the CNN, at the
training batch (128) and at 256, each the median of 7 calls after a warm-up,
both variants in the same run. Writes benchmarks/results/conv_grad_<backend>.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks._env import environment
from jaxviz.models.cnn import CNN, init_variables

LAYERS = [(32, 3, 32), (32, 32, 32), (16, 32, 64), (16, 64, 64), (8, 64, 128), (8, 128, 128)]  # (size, in, out)


def conv_same(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_grad_matmuls(x, cotangent):
    """d(loss)/d(kernel) of a 3x3 'SAME' conv as nine matrix products."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ct = cotangent.reshape(-1, cotangent.shape[-1])
    taps = [padded[:, i:i + h, j:j + w, :].reshape(-1, c).T @ ct for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, -1)


@jax.custom_vjp
def conv_matmul_grad(x, kernel):
    return conv_same(x, kernel)


conv_matmul_grad.defvjp(
    lambda x, k: (conv_same(x, k), (x, k)),
    lambda res, ct: (jax.vjp(lambda v: conv_same(v, res[1]), res[0])[1](ct)[0], kernel_grad_matmuls(res[0], ct)))


def median_time(fn, *args, repeats: int = 7) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_rows(batch: int) -> list[dict]:
    rows = []
    for size, cin, cout in LAYERS:
        x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
        k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
        ct = jax.random.normal(jax.random.key(2), (batch, size, size, cout))
        xla = jax.jit(lambda x, k, ct: jax.vjp(conv_same, x, k)[1](ct)[1])
        ours = jax.jit(lambda x, k, ct: kernel_grad_matmuls(x, ct))
        err = float(jnp.abs(xla(x, k, ct) - ours(x, k, ct)).max() / jnp.abs(xla(x, k, ct)).max())
        t_xla, t_ours = median_time(xla, x, k, ct), median_time(ours, x, k, ct)
        rows.append({"batch": batch, "size": size, "in": cin, "out": cout, "xla_s": t_xla, "matmuls_s": t_ours,
                     "xla_over_matmuls": t_xla / t_ours, "max_relative_difference": err})
    return rows


class _MatmulGradConv(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        return conv_matmul_grad(x, kernel)


def train_step_seconds(batch: int, matmul_grad: bool) -> float:
    """One SGD step of the CNN; ``matmul_grad`` swaps its convs for the custom-VJP ones."""
    model = CNN()
    variables = init_variables(model, jax.random.key(0))
    tx = optax.sgd(0.1, 0.9)
    opt = tx.init(variables["params"])
    x = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
    y = jnp.zeros(batch, jnp.int32)

    def conv_factory(features, kernel_size, padding, use_bias, name):
        return _MatmulGradConv(features, name=name)

    @jax.jit
    def step(params, stats, opt, key):
        def loss(p):
            out, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd
        (value, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt, value

    original = nn.Conv
    if matmul_grad:  # the model builds nn.Conv(width, (3, 3), padding=..., use_bias=False, name=...)
        nn.Conv = conv_factory
    try:
        return median_time(step, variables["params"], variables["batch_stats"], opt, jax.random.key(2))
    finally:
        nn.Conv = original


def main() -> None:
    layers = layer_rows(128) + layer_rows(256)
    steps = []
    for batch in (128, 256):
        matmuls, xla = train_step_seconds(batch, True), train_step_seconds(batch, False)
        steps.append({"batch": batch, "matmul_grad_s": matmuls, "xla_grad_s": xla, "xla_over_matmuls": xla / matmuls})
        print(steps[-1], flush=True)
    record = {"question": "is a nine-matmul kernel gradient faster than XLA:CPU's for the jaxviz CNN?",
              "layers": layers, "train_step": steps, "environment": environment(),
              "command": "python -m benchmarks.conv_grad"}
    out = Path(__file__).resolve().parent / "results" / f"conv_grad_{jax.default_backend()}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
