"""Occlusion throughput: the fused engine vs naive loops vs Captum, in one run.

    python -m benchmarks.occlusion [--data-dir DIR] [--gpu-sizes] [--quick]

Claim on a CPU (ratios from one run): the fused engine reaches >= 0.9x the
throughput of a plain forward pass over the same number of images, >= 2x a
loop over (image, position) pairs, and >= 4x Captum's ``Occlusion`` (its
best ``perturbations_per_eval``) on the same weights ported to PyTorch.

Workloads (f = the pretrained CNN up to ``fc1``, all 512 units):
  a: the notebook's: top-10 images of 5 fc1 units (50 images), window 11, stride 4, centered.
  b: window 8, stride 2, valid anchoring: 1,000 images on a CPU, 10,000 with --gpu-sizes.
  c: window 5, stride 1, valid anchoring: 100 images on a CPU, 10,000 with --gpu-sizes.
Images: the embedded sample (1,000 CIFAR-10 test images), or DIR/<class>/*
(e.g. the CIFAR-10 test folder), repeated when a workload asks for more.

The slow references run on a subset of each workload's images (recorded as
``images``); every method is reported as occluded forwards per second, so
rates compare directly. Each timing: one warm-up call (compile), then the
median of ``repeats`` timed calls, each ended by ``jax.block_until_ready``
(results come back to the host as numpy). Writes
benchmarks/results/occlusion_<backend>.json and .md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxviz
from benchmarks._env import environment, machine_line

from references import occlude_notebook, occlude_pair_loop, occlude_position_loop

RESULTS = Path(__file__).resolve().parent / "results"
PLAIN_BATCH = 256


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 5 ms (Linux)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False


def device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def timed(fn, repeats: int) -> dict:
    """Warm-up (compile) call, then ``repeats`` timed calls; memory sampled over all."""
    with PeakRSS() as mem:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"first_call_seconds": first, "median_seconds": median, "times": times,
            "compile_seconds_estimate": max(first - median, 0.0),
            "peak_rss_increase_bytes": mem.peak - mem.start, "device_peak_bytes": device_peak_bytes()}


def matmul_peak(repeats: int = 10) -> float:
    """float32 matrix-multiply GFLOP/s on the default device (the roofline for this run)."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    r = timed(lambda: mm(a, b), repeats)
    return 2 * n ** 3 / r["median_seconds"] / 1e9


def load_images(data_dir: str | None) -> jaxviz.Dataset:
    return jaxviz.load_image_folder(data_dir) if data_dir else jaxviz.load_sample()


def take(images: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n] if reps > 1 else images[:n]


def captum_rate(model_t, x: np.ndarray, window: int, stride: int, target: int, repeats: int) -> dict:
    """Captum Occlusion on NCHW input at its best perturbations_per_eval."""
    import torch
    from captum.attr import Occlusion

    occ = Occlusion(model_t)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def run(ppe, inputs):
        with torch.no_grad():
            return occ.attribute(inputs, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                 baselines=0.0, target=target, perturbations_per_eval=ppe)

    trial = {}
    for ppe in (1, 4, 16, 64):  # pick the fastest on the images that are then timed
        start = time.perf_counter()
        run(ppe, xt)
        trial[ppe] = time.perf_counter() - start
    best = min(trial, key=trial.get)
    r = timed(lambda: run(best, xt), repeats)
    r["perturbations_per_eval"] = best
    r["trial_seconds"] = trial
    return r


def workload(name, network, f, variables, images, *, window, stride, anchor, subsets, repeats, flops, model_t,
             target):
    n = len(images)
    x = network.to_input(images)
    spans = [len(jaxviz.window_spans(32, window, stride, anchor))] * 2
    positions = spans[0] * spans[1]
    out = {"workload": name, "images": n, "window": window, "stride": stride, "anchor": anchor,
           "positions": positions, "occluded_forwards": n * positions, "methods": {}}
    win, st = (window, window), (stride, stride)

    def record(method, result, used_images, forwards=None):
        forwards = forwards or used_images * positions
        result.update(images=used_images, forwards=forwards, forwards_per_second=forwards / result["median_seconds"],
                      gflops=forwards * flops / result["median_seconds"] / 1e9)
        out["methods"][method] = result
        print(f"  {name} {method:<14} {used_images:>6} img  {result['forwards_per_second']:>10.0f} fwd/s "
              f"(median {result['median_seconds']:.3f} s, first {result['first_call_seconds']:.2f} s)", flush=True)

    fused = lambda: jaxviz.occlude(f, x, params=variables, window=win, stride=st, anchor=anchor).grid
    record("fused", timed(fused, repeats), n)
    # the same number of forwards through the plain network: one device-resident batch of real
    # images, called repeatedly; results copied to the host like the engine's
    plain_fn = jax.jit(functools.partial(f, variables))
    batch = jax.device_put(take(x, PLAIN_BATCH))
    calls = -(-n * positions // PLAIN_BATCH)
    plain = lambda: [np.asarray(plain_fn(batch)) for _ in range(calls)][-1]
    record("plain_forward", timed(plain, repeats), n, forwards=calls * PLAIN_BATCH)
    if name == "b":  # ablations of the engine's design, on a subset
        m = min(n, subsets["ablation"])
        for method, fn in ablations(f, variables, x[:m], win, st, anchor).items():
            record(method, timed(fn, repeats), m)
    m = min(n, subsets["position_loop"])
    record("position_loop", timed(lambda: occlude_position_loop(
        f, x[:m], params=variables, window=win, stride=st, anchor=anchor)[1], repeats), m)
    m = min(n, subsets["notebook"])
    record("notebook", timed(lambda: occlude_notebook(
        f, x[:m], params=variables, window=win, stride=st, anchor=anchor)[1], repeats), m)
    m = min(n, subsets["pair_loop"])
    record("pair_loop", timed(lambda: occlude_pair_loop(
        f, x[:m], params=variables, window=win, stride=st, anchor=anchor)[1], max(1, repeats // 2)), m)
    if model_t is not None:
        m = min(n, subsets["captum"])
        record("captum", captum_rate(model_t, x[:m], window, stride, target, max(1, repeats // 2)), m)

    # correctness on a slice: the fused grid equals the position loop's
    k = min(n, 8)
    fused_grid = jaxviz.occlude(f, x[:k], params=variables, window=win, stride=st, anchor=anchor).grid
    ref_grid = occlude_position_loop(f, x[:k], params=variables, window=win, stride=st, anchor=anchor)[1]
    out["max_relative_error_vs_position_loop"] = float(np.abs(fused_grid - ref_grid).max() / np.abs(ref_grid).max())
    rate = {k: v["forwards_per_second"] for k, v in out["methods"].items()}
    out["ratios"] = {f"fused_over_{k}": rate["fused"] / v for k, v in rate.items() if k != "fused"}
    return out


def ablations(f, variables, x, win, st, anchor) -> dict:
    """Variants of the fused engine: without the materializing barrier, and the "obvious"
    form, vmapping f itself over (image, position) pairs, one masked image at a time."""
    def without_barrier():
        return jaxviz.occlude(f, x, params=variables, window=win, stride=st, anchor=anchor, materialize=False).grid

    rows = jaxviz.window_spans(x.shape[1], win[0], st[0], anchor)
    cols = jaxviz.window_spans(x.shape[2], win[1], st[1], anchor)
    boxes = jnp.asarray([[r0, r1, c0, c1] for r0, r1 in rows for c0, c1 in cols], jnp.int32)
    padded = -(-len(x) * len(boxes) // 256) * 256  # whole chunks of 256 pairs; padding repeats pair 0
    pairs_image = np.resize(np.repeat(np.arange(len(x)), len(boxes)), padded).astype(np.int32)
    pairs_box = np.resize(np.tile(np.arange(len(boxes)), len(x)), padded).astype(np.int32)
    xd = jax.device_put(x)

    @jax.jit
    def obvious(image_idx, box_idx):
        def one(i, b):  # multiply by the mask, then apply f to a batch of one
            r = jnp.arange(x.shape[1])[:, None]
            c = jnp.arange(x.shape[2])[None, :]
            box = boxes[b]
            keep = ~((r >= box[0]) & (r < box[1]) & (c >= box[2]) & (c < box[3]))
            return f(variables, (xd[i] * keep[..., None])[None])[0]
        return jax.vmap(one)(image_idx, box_idx)

    def vmap_multiply():
        out = [np.asarray(obvious(pairs_image[s:s + 256], pairs_box[s:s + 256]))
               for s in range(0, padded, 256)]
        return out[-1]

    return {"fused_no_barrier": without_barrier, "vmap_f_multiply": vmap_multiply}


def notebook_images(network, data: jaxviz.Dataset) -> np.ndarray:
    """The top-10 images of 5 fc1 units picked by selectivity (the notebook's workload)."""
    scores = jaxviz.unit_scores(jaxviz.layer_features(network, data.images, layer="fc1"))
    study = jaxviz.study_units(scores, data.labels, len(data.class_names), k=10, count=5)
    return data.images[study.shown_indices()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="image folder DIR/<class>/* (default: the embedded sample)")
    parser.add_argument("--gpu-sizes", action="store_true", help="10,000 images for workloads b and c")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--weights", help="weights file (default: the shipped pretrained CNN)")
    parser.add_argument("--out", default=None, help="result file stem (default occlusion_<backend>)")
    args = parser.parse_args()

    weights = jaxviz.load_weights(args.weights) if args.weights else jaxviz.load_pretrained()
    network, model, variables = weights.network, weights.model, jax.device_put(weights.variables)
    data = load_images(args.data_dir)
    f = network.layer_fn("fc1")
    probe = jax.ShapeDtypeStruct((256, 32, 32, 3), jnp.float32)
    flops = jax.jit(f).lower(variables, probe).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops)["flops"] / 256

    model_t = None
    if not args.no_captum:
        try:
            import captum  # noqa: F401
            import torch

            from torch_port import torch_cnn

            torch.set_num_threads(os.cpu_count() or 1)
            model_t = torch_cnn(model, weights.variables)
            x = network.to_input(data.images[:8])
            ref = np.asarray(f(variables, x))
            got = model_t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
            port_error = float(np.abs(got - ref).max() / np.abs(ref).max())
            if port_error > 1e-4:
                raise RuntimeError(f"torch port differs from JAX: relative error {port_error:.2e}")
        except ImportError:
            print("torch/captum not installed: skipping Captum (pip install torch==2.13.0 captum)")

    big = 10_000 if args.gpu_sizes else None
    plan = {
        "a": dict(images=notebook_images(network, data), window=11, stride=4, anchor="centered"),
        "b": dict(images=take(data.images, big or 1000), window=8, stride=2, anchor="valid"),
        "c": dict(images=take(data.images, big or 100), window=5, stride=1, anchor="valid"),
    }
    subsets = {"position_loop": 200, "notebook": 100, "pair_loop": 10, "captum": 20, "ablation": 200}
    if args.quick:
        plan = {k: {**v, "images": v["images"][:6]} for k, v in plan.items()}
        subsets = {k: 2 for k in subsets}
    record = {
        "claim": "CPU: fused >= 0.9x plain forward, >= 2x pair loop, >= 4x Captum (forwards/s, one run)",
        "environment": environment(),
        "function": "pretrained CNN up to fc1 (512 units), float32",
        "flops_per_forward": flops,
        "matmul_peak_gflops": matmul_peak(),
        "repeats": args.repeats,
        "quick": args.quick,
        "command": "python -m benchmarks.occlusion" + (" --gpu-sizes" if args.gpu_sizes else ""),
        "workloads": {},
    }
    print(f"backend {jax.default_backend()}, {flops / 1e6:.1f} MFLOP/forward, "
          f"matmul peak {record['matmul_peak_gflops']:.0f} GFLOP/s", flush=True)
    for name, w in plan.items():
        record["workloads"][name] = workload(name, network, f, variables, w.pop("images"), **w, subsets=subsets,
                                             repeats=args.repeats, flops=flops, model_t=model_t, target=0)
    stem = args.out or f"occlusion_{jax.default_backend()}" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))
    print(json.dumps({name: w["ratios"] for name, w in record["workloads"].items()}, indent=1))


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"Occlusion benchmark: {machine_line(env)}.",
             f"f = CNN up to fc1 ({record['flops_per_forward'] / 1e6:.1f} MFLOP/forward); matmul peak "
             f"{record['matmul_peak_gflops']:.0f} GFLOP/s; median of {record['repeats']} runs after a warm-up.", "",
             "Peak RSS +MB: growth of this process's resident memory while the method ran; memory that earlier "
             "rows freed is reused, so it under-reports later rows (the notebook row shows its host copies).", "",
             "| workload | method | images | forwards/s | GFLOP/s | median s | first call s | peak RSS +MB "
             "| fused ÷ method |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w in record["workloads"].items():
        label = f"{name}: win {w['window']} stride {w['stride']} {w['anchor']}, {w['positions']} pos"
        fused = w["methods"]["fused"]["forwards_per_second"]
        for method, r in w["methods"].items():
            lines.append(f"| {label} | {method} | {r['images']} | {r['forwards_per_second']:,.0f} | {r['gflops']:.1f} | "
                         f"{r['median_seconds']:.3f} | {r['first_call_seconds']:.2f} | "
                         f"{r['peak_rss_increase_bytes'] / 2**20:,.0f} | {fused / r['forwards_per_second']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
