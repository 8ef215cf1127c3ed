"""Perturbation methods' throughput (RISE, feature ablation, deletion / insertion, MuFidelity) and RISE's memory.

    python -m benchmarks.perturbation [--quick] [--gpu] [--no-captum] [--out STEM]
        [--repeats R] [--models cnn resnet] [--memory-images N] [--no-memory]

Claims (ratios from rates measured in one run, at equal numbers of forwards):
  1. Every method's fused engine call reaches >= 0.9x the throughput of a
     plain jitted forward over the same number of images, and >= 2x the
     obvious Python loop (one jitted forward of the whole image batch per
     mask / segment / step / subset, ``tests/references.py``).
  2. Feature ablation over an 8x8 grid vs Captum's ``FeatureAblation`` with
     the same feature mask at its best ``perturbations_per_eval``, on the
     same weights ported to PyTorch (the measured ratio, whichever way it falls).
  3. Deletion + insertion curves for 100 images x 100 steps x all 10 classes
     (``targets=None``) on the CNN: forwards/s and wall time.
  4. RISE's peak memory on ``--memory-images`` images stays flat for
     num_masks in (1000, 4000, 10000): each setting in a fresh subprocess,
     the growth of its peak resident memory (VmHWM, reset before the call)
     over its memory before the call; the device's peak bytes where it has them.
  5. ``--gpu``: bigger sizes for an accelerator (writes perturbation_gpu.json
     when the default backend is a GPU); Captum still runs on the CPU there.

Models: the pretrained CNN (f = its ``logits``, 10 outputs) on the embedded
sample's 32x32 images, and the small ResNet of ``examples/resnet_linen.py``
(fixed random weights, f = its ``head`` logits) on the sample resized to 64x64.
Fill 0 everywhere; attribution maps for the curves and MuFidelity are seeded
uniform noise (the cost does not depend on them).

Counting: ``forwards`` is what the method's output needs (RISE and ablation
and MuFidelity: N * (masks + 1), the unperturbed base included; a curve: N *
(steps + 1) per mode), the same for every implementation of a workload, so a
rate is useful forwards per second (extra work an implementation does, e.g.
the curves' base pass in the engine, counts against it). The slow references
run on a subset of masks / steps / subsets over the *same* image batch (so
their batch size is the workload's), Captum on a subset of images; all
recorded per row. Each timing: one warm-up call (its time is the first-call /
compile time), then the median of ``--repeats`` calls, each ended by
``jax.block_until_ready`` (results come back to the host as numpy). Each
reference's results are checked against the engine's (max relative error).
The plain forward row runs whole batches (256 images on a CPU, 2048 on an
accelerator), so its ``forwards`` is the workload's rounded up.

Sizes (``SIZES`` / ``SUBSETS`` below, recorded in the JSON): on a CPU the CNN
runs 100 images (RISE: 20 images x 1000 masks), the ResNet 20 (RISE: 10 x
250, curves 10 images), and the memory runs use 20 images (100 with
``--memory-images 100``: about 9 more minutes on 2 cores), all of it about
10-12 minutes on a quiet 2-core CPU. ``--gpu``: 1000 images (RISE: 250
(CNN) / 100 (ResNet) images x 4000 masks), memory on 100 images.
Writes benchmarks/results/perturbation_<backend>.json and .md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxviz
from benchmarks._env import ROOT, benchmark_parser, environment
from benchmarks.occlusion import PLAIN_BATCH, RESULTS, PeakRSS, device_peak_bytes, matmul_peak, take, timed

from references import ablation_segment_loop, curve_step_loop, mufidelity_subset_loop, rise_mask_loop

GRID = 8  # ablation segments and MuFidelity lattice: 8 x 8 cells
MEMORY_MASKS = (1000, 4000, 10000)
FLAT_TOLERANCE = 32 << 20  # bytes: peak growth spread across num_masks that still counts as flat

# Sizes: CPU defaults fit ~10-15 minutes on 2 cores; --gpu for an accelerator; --quick to check the script.
SIZES = {
    "cpu": {
        "cnn": dict(images=100, rise_images=20, rise_masks=1000, curve_images=100, steps=100, subsets=128),
        "resnet": dict(images=20, rise_images=10, rise_masks=250, curve_images=10, steps=100, subsets=128),
    },
    "gpu": {
        "cnn": dict(images=1000, rise_images=250, rise_masks=4000, curve_images=1000, steps=100, subsets=128),
        "resnet": dict(images=1000, rise_images=100, rise_masks=4000, curve_images=1000, steps=100, subsets=128),
    },
    "quick": {
        "cnn": dict(images=4, rise_images=2, rise_masks=16, curve_images=4, steps=10, subsets=8),
        "resnet": dict(images=2, rise_images=2, rise_masks=8, curve_images=2, steps=10, subsets=4),
    },
}
# Slow references: masks / steps / subsets of the same image batch, and images for Captum.
SUBSETS = {
    "cpu": {"cnn": dict(loop_masks=200, loop_steps=20, loop_subsets=32, captum_images=20),
            "resnet": dict(loop_masks=50, loop_steps=20, loop_subsets=32, captum_images=5)},
    "quick": {"cnn": dict(loop_masks=4, loop_steps=5, loop_subsets=4, captum_images=2, captum_ppe=(16, 64)),
              "resnet": dict(loop_masks=4, loop_steps=5, loop_subsets=4, captum_images=2, captum_ppe=(16, 64))},
}
SUBSETS["gpu"] = {**SUBSETS["cpu"], "resnet": SUBSETS["cpu"]["cnn"]}
MEMORY_IMAGES = {"cpu": 20, "gpu": 100, "quick": 2}


# --------------------------------------------------------------------------- models


def load_example(name: str):
    """Import ``examples/<name>.py`` by path (as tests/conftest.py ``load_example`` does)."""
    spec = importlib.util.spec_from_file_location(f"_jaxviz_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_models(names: list[str], images: np.ndarray, count: int) -> dict:
    """name -> dict(network, f, variables, x (float32 input of ``count`` images), torch (a builder))."""
    models = {}
    if "cnn" in names:
        weights = jaxviz.load_pretrained()
        net = weights.network

        def torch_cnn_logits(weights=weights):
            from torch_port import torch_cnn
            return torch_cnn(weights.model, weights.variables, layer="logits")

        models["cnn"] = dict(network=net, layer="logits", variables=jax.device_put(weights.variables),
                             x=net.to_input(take(images, count)), torch=torch_cnn_logits,
                             function="pretrained CNN (benchmarks: jaxviz.load_pretrained), logits (10), 32x32 input")
    if "resnet" in names:
        example = load_example("resnet_linen")
        module, variables = example.build()
        net = jaxviz.from_linen(module, variables, input_shape=(64, 64, 3), class_names=example.CLASS_NAMES)
        models["resnet"] = dict(network=net, layer=net.output_layer, variables=jax.device_put(variables),
                                x=net.to_input(jaxviz.resize_images(take(images, count), 64, 64)),
                                torch=lambda variables=variables: torch_resnet(variables),
                                function="examples/resnet_linen.py ResNet (seeded weights), head logits (10), "
                                         "sample resized to 64x64")
    for m in models.values():
        m["f"] = m["network"].layer_fn(m["layer"])
    return models


def torch_resnet(variables):
    """``examples/resnet_linen.py``'s ResNet in PyTorch (NCHW input), the same weights, inference batch norm."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    params, stats = variables["params"], variables["batch_stats"]
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy

    class SameConv(nn.Module):  # flax padding="SAME": total max((ceil(n / s) - 1) * s + k - n, 0), low half first
        def __init__(self, kernel, stride):
            super().__init__()
            k = kernel.shape[0]
            self.conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], k, stride, bias=False)
            self.conv.weight.data = t(np.asarray(kernel).transpose(3, 2, 0, 1))
            self.k, self.s = k, stride

        def forward(self, x):
            pads = []
            for n in (x.shape[3], x.shape[2]):  # F.pad order: last axis first
                total = max((-(-n // self.s) - 1) * self.s + self.k - n, 0)
                pads += [total // 2, total - total // 2]
            return self.conv(F.pad(x, pads))

    def bn(p, s):
        b = nn.BatchNorm2d(p["scale"].shape[0], eps=1e-5)  # flax's default epsilon
        b.weight.data, b.bias.data = t(p["scale"]), t(p["bias"])
        b.running_mean.data, b.running_var.data = t(s["mean"]), t(s["var"])
        return b

    class Block(nn.Module):
        def __init__(self, p, s, stride):
            super().__init__()
            self.conv1, self.bn1 = SameConv(p["conv1"]["kernel"], stride), bn(p["bn1"], s["bn1"])
            self.conv2, self.bn2 = SameConv(p["conv2"]["kernel"], 1), bn(p["bn2"], s["bn2"])
            self.proj = (nn.Sequential(SameConv(p["proj"]["kernel"], stride), bn(p["proj_bn"], s["proj_bn"]))
                         if "proj" in p else nn.Identity())

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + self.proj(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(SameConv(params["stem"]["conv"]["kernel"], 1),
                                      bn(params["stem"]["bn"], stats["stem"]["bn"]), nn.ReLU())
            stages = sorted(k for k in params if k.startswith("stage"))
            self.blocks = nn.Sequential(*[Block(params[st][b], stats[st][b], 2 if (i > 0 and b == "block0") else 1)
                                          for i, st in enumerate(stages) for b in ("block0", "block1")])
            self.head = nn.Linear(*np.asarray(params["head"]["kernel"]).shape)
            self.head.weight.data = t(np.asarray(params["head"]["kernel"]).T)
            self.head.bias.data = t(params["head"]["bias"])

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return Net().eval()


def port_to_torch(model: dict) -> tuple[object | None, str]:
    """The model in PyTorch, checked against JAX on 8 images; ``(None, why)`` when it cannot be used."""
    try:
        import captum  # noqa: F401
        import torch
    except ImportError:
        return None, "torch/captum not installed (pip install torch==2.13.0 captum)"
    torch.set_num_threads(os.cpu_count() or 1)
    model_t = model["torch"]()
    x = model["x"][:8]
    ref = np.asarray(model["f"](model["variables"], x))
    with torch.no_grad():
        got = model_t(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    error = float(np.abs(got - ref).max() / np.abs(ref).max())
    if error > 1e-4:
        return None, f"torch port differs from JAX: relative error {error:.2e}"
    return model_t, f"torch port relative error {error:.1e}"


def flops_per_forward(f, variables, shape) -> float:
    probe = jax.ShapeDtypeStruct((PLAIN_BATCH, *shape), np.float32)
    cost = jax.jit(f).lower(variables, probe).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"] / PLAIN_BATCH


# --------------------------------------------------------------------------- timing


def timed_keep(fn, repeats: int) -> tuple[dict, object]:
    """``timed`` that also returns the last call's result (for the correctness checks)."""
    box = {}

    def call():
        box["out"] = fn()
        return box["out"]

    return timed(call, repeats), box["out"]


def plain_batch(quick: bool = False) -> int:
    """Images per plain forward call: 256 on a CPU (its throughput plateaus there), 2048 on an
    accelerator; 32 with --quick (a check that the script runs, not a measurement)."""
    return 32 if quick else PLAIN_BATCH if jax.default_backend() == "cpu" else 2048


def plain_forward(f, variables, x: np.ndarray, forwards: int, repeats: int, size: int) -> dict:
    """At least ``forwards`` forwards of real images through the jitted f: one device-resident batch of
    ``plain_batch()`` images, called repeatedly, each result copied to the host like the engine's.
    The row's rate counts the forwards actually run (``forwards`` rounded up to whole batches)."""
    fn = jax.jit(f)
    batch = jax.device_put(take(x, size))
    calls = -(-forwards // size)
    r = timed(lambda: [np.asarray(fn(variables, batch)) for _ in range(calls)][-1], repeats)
    r.update(batch=size, calls=calls, forwards_needed=forwards)
    return r


def captum_ablation(model_t, x: np.ndarray, segments: np.ndarray, repeats: int,
                    ppe_values: tuple[int, ...] = (1, 4, 16, 64)) -> tuple[dict, np.ndarray]:
    """Captum FeatureAblation (target 0, baseline 0) with the segment map as feature mask, at its best
    perturbations_per_eval among ``ppe_values`` (picked on the images that are then timed)."""
    import torch
    from captum.attr import FeatureAblation

    ablation = FeatureAblation(model_t)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    mask = torch.from_numpy(segments.astype(np.int64))[None, None]  # (1, 1, H, W): every image and channel

    def run(ppe):
        with torch.no_grad():
            return ablation.attribute(xt, baselines=0.0, target=0, feature_mask=mask, perturbations_per_eval=ppe)

    trial = {}
    for ppe in ppe_values:
        start = time.perf_counter()
        run(ppe)
        trial[ppe] = time.perf_counter() - start
    best = min(trial, key=trial.get)
    r, attr = timed_keep(lambda: run(best), repeats)
    r.update(perturbations_per_eval=best, trial_seconds=trial, device="cpu (torch)", target=0)
    return r, attr[:, 0].numpy()


def rel_error(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


# --------------------------------------------------------------------------- one model


def bench_model(name: str, model: dict, sizes: dict, subsets: dict, repeats: int, model_t, captum_note: str,
                plain_size: int) -> dict:
    f, variables = model["f"], model["variables"]
    x_all = model["x"]
    n, h, w, c = x_all.shape
    flops = flops_per_forward(f, variables, (h, w, c))
    out = {"function": model["function"], "input_shape": [h, w, c], "flops_per_forward": flops,
           "sizes": sizes, "subsets": subsets, "captum": captum_note, "methods": {}}
    slow = max(1, repeats // 2)
    rng = np.random.default_rng(0)
    attribution = rng.random((n, h, w), dtype=np.float32)
    print(f"{name}: {flops / 1e6:.1f} MFLOP/forward, input {h}x{w}x{c}", flush=True)

    def method(key, **info):
        out["methods"][key] = {**info, "rows": {}, "checks": {}}
        return out["methods"][key]

    def record(m, key, impl, result, images, forwards):
        secs = result["median_seconds"]
        result.update(images=images, forwards=forwards, forwards_per_second=forwards / secs,
                      gflops=forwards * flops / secs / 1e9)
        m["rows"][impl] = result
        print(f"  {name:<6} {key:<18} {impl:<13} {images:>5} img {forwards:>9} fwd "
              f"{result['forwards_per_second']:>9.0f} fwd/s (median {secs:.3f} s, first "
              f"{result['first_call_seconds']:.2f} s)", flush=True)

    def plain(m, key, images, forwards):
        r = plain_forward(f, variables, x_all, forwards, repeats, plain_size)
        record(m, key, "plain_forward", r, images, r["calls"] * r["batch"])

    # RISE: all outputs accumulated on the device; the loop uses the first loop_masks of the same masks
    x = x_all[:sizes["rise_images"]]
    k, masks = len(x), sizes["rise_masks"]
    m = method("rise", images=k, num_masks=masks, cells=7, p=0.5)
    r, _ = timed_keep(lambda: jaxviz.rise(f, x, num_masks=masks, params=variables).maps, repeats)
    record(m, "rise", "fused", r, k, k * (masks + 1))
    plain(m, "rise", k, k * (masks + 1))
    lm = min(masks, subsets["loop_masks"])
    r, (_, loop_maps) = timed_keep(lambda: rise_mask_loop(
        f, x, jaxviz.rise_masks(h, w, num_masks=lm), p=0.5, params=variables), slow)
    r["masks"] = lm
    record(m, "rise", "loop", r, k, k * (lm + 1))
    m["checks"]["max_relative_error_loop_vs_fused"] = rel_error(
        loop_maps, jaxviz.rise(f, x, num_masks=lm, params=variables).maps)

    # feature ablation over an 8x8 grid, all outputs; Captum follows output 0 (the same forwards)
    x = x_all[:sizes["images"]]
    k = len(x)
    segments = jaxviz.grid_segments(h, w, cells=GRID)
    s = GRID * GRID
    m = method("feature_ablation", images=k, segments=s, grid=GRID)
    r, fused = timed_keep(lambda: jaxviz.feature_ablation(f, x, segments=segments, params=variables), repeats)
    record(m, "feature_ablation", "fused", r, k, k * (s + 1))
    plain(m, "feature_ablation", k, k * (s + 1))
    r, (_, loop_scores) = timed_keep(lambda: ablation_segment_loop(f, x, segments, params=variables), slow)
    r["segments"] = s
    record(m, "feature_ablation", "loop", r, k, k * (s + 1))
    m["checks"]["max_relative_error_loop_vs_fused"] = rel_error(loop_scores, fused.scores)
    if model_t is not None:
        kc = min(k, subsets["captum_images"])
        r, captum_maps = captum_ablation(model_t, x[:kc], segments, slow, subsets.get("captum_ppe", (1, 4, 16, 64)))
        record(m, "feature_ablation", "captum", r, kc, kc * (s + 1))
        m["checks"]["max_relative_error_captum_vs_fused"] = rel_error(captum_maps, fused.maps[:kc, ..., 0])

    # deletion + insertion curves, targets=None (every output); the loop runs loop_steps (a divisor of
    # steps: its step j is the engine's step j * steps / loop_steps, the same pixel count)
    x = x_all[:sizes["curve_images"]]
    k, steps = len(x), sizes["steps"]
    attr = attribution[:k]
    m = method("deletion_insertion", images=k, steps=steps, outputs=int(np.prod(fused.base.shape[1:])),
               targets=None)
    both = lambda: (jaxviz.deletion_curve(f, x, attr, steps=steps, params=variables).curve,
                    jaxviz.insertion_curve(f, x, attr, steps=steps, params=variables).curve)
    r, (deletion, insertion) = timed_keep(both, repeats)
    record(m, "deletion_insertion", "fused", r, k, 2 * k * (steps + 1))
    plain(m, "deletion_insertion", k, 2 * k * (steps + 1))
    ls = min(steps, subsets["loop_steps"])
    if steps % ls:
        raise ValueError(f"loop_steps {ls} must divide steps {steps}")
    r, (loop_del, loop_ins) = timed_keep(lambda: (
        curve_step_loop(f, x, attr, mode="deletion", steps=ls, params=variables),
        curve_step_loop(f, x, attr, mode="insertion", steps=ls, params=variables)), slow)
    r["steps"] = ls
    record(m, "deletion_insertion", "loop", r, k, 2 * k * (ls + 1))
    stride = steps // ls
    m["checks"]["max_relative_error_loop_vs_fused"] = max(rel_error(loop_del, deletion[:, ::stride]),
                                                          rel_error(loop_ins, insertion[:, ::stride]))

    # MuFidelity: 8x8 lattice, 20% of the cells per subset, targets=None; the loop runs the first subsets
    x = x_all[:sizes["images"]]
    k, count = len(x), sizes["subsets"]
    attr = attribution[:k]
    m = method("mu_fidelity", images=k, num_subsets=count, grid=GRID, subset_fraction=0.2, targets=None)
    r, fid = timed_keep(lambda: jaxviz.mu_fidelity(f, x, attr, grid=GRID, num_subsets=count, params=variables),
                        repeats)
    record(m, "mu_fidelity", "fused", r, k, k * (count + 1))
    plain(m, "mu_fidelity", k, k * (count + 1))
    lc = min(count, subsets["loop_subsets"])
    r, (_, loop_drops) = timed_keep(lambda: mufidelity_subset_loop(
        f, x, fid.subsets[:lc], grid=GRID, params=variables), slow)
    r["subsets"] = lc
    record(m, "mu_fidelity", "loop", r, k, k * (lc + 1))
    m["checks"]["max_relative_error_loop_vs_fused"] = rel_error(loop_drops, fid.drops[:, :lc])

    for m in out["methods"].values():
        rate = {impl: row["forwards_per_second"] for impl, row in m["rows"].items()}
        m["ratios"] = {f"fused_over_{impl}": rate["fused"] / v for impl, v in rate.items() if impl != "fused"}
        m["bars"] = {"fused_over_plain_forward >= 0.9": m["ratios"]["fused_over_plain_forward"] >= 0.9,
                     "fused_over_loop >= 2": m["ratios"]["fused_over_loop"] >= 2}
    return out


# --------------------------------------------------------------------------- RISE memory


def _proc_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rise_memory_child(num_masks: int, images: int) -> None:
    """One RISE call in this fresh process; prints one JSON line with its memory."""
    weights = jaxviz.load_pretrained()
    net = weights.network
    f = net.layer_fn("logits")
    variables = jax.device_put(weights.variables)
    x = net.to_input(take(jaxviz.load_sample().images, images))
    jax.block_until_ready(jax.jit(f)(variables, x[:1]))  # the runtime is up before the baseline
    before = _proc_status("VmRSS") or PeakRSS._rss()
    try:  # reset the peak (VmHWM) to the current RSS, so the peak is this call's
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    with PeakRSS() as sampled:
        start = time.perf_counter()
        result = jaxviz.rise(f, x, num_masks=num_masks, params=variables)
        jax.block_until_ready(result.maps)
        seconds = time.perf_counter() - start
    hwm = _proc_status("VmHWM")
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    peak = hwm if (reset and hwm) else max_rss
    h, w, c = x.shape[1:]
    print(json.dumps({
        "num_masks": num_masks, "images": images, "chunk_size": result.chunk_size,
        "rss_before_bytes": before, "peak_rss_bytes": peak, "peak_rss_growth_bytes": peak - before,
        "peak_measure": "VmHWM after reset" if (reset and hwm) else "ru_maxrss (process lifetime)",
        "sampled_peak_growth_bytes": sampled.peak - sampled.start, "ru_maxrss_bytes": max_rss,
        "device_peak_bytes": device_peak_bytes(), "seconds_including_compile": seconds,
        "forwards_per_second_including_compile": images * (num_masks + 1) / seconds,
        "masks_array_bytes_if_materialized": num_masks * h * w * 4,
        "perturbed_images_bytes_if_materialized": images * num_masks * h * w * c * 4,
    }))


def rise_memory(images: int, masks_list: tuple[int, ...]) -> dict:
    runs = []
    for masks in masks_list:
        print(f"  rise memory: {images} images x {masks} masks (fresh process)", flush=True)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.perturbation", "--rise-memory-child",
                               str(masks), str(images)], cwd=ROOT, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or not lines:
            runs.append({"num_masks": masks, "images": images, "error": proc.stderr[-2000:]})
            print(f"    failed: {proc.stderr[-500:]}", flush=True)
            continue
        run = json.loads(lines[-1])
        runs.append(run)
        print(f"    peak RSS +{run['peak_rss_growth_bytes'] / 2**20:.0f} MB ({run['peak_measure']}), "
              f"{run['seconds_including_compile']:.1f} s", flush=True)
    done = [r for r in runs if "error" not in r]
    growth = [r["peak_rss_growth_bytes"] for r in done]
    out = {"function": "pretrained CNN logits", "images": images, "runs": runs,
           "note": "each peak includes compiling the RISE program (one chunk size for every num_masks once the "
                   "pairs exceed a chunk); flat: growth spread across num_masks <= flat_tolerance_bytes",
           "flat_tolerance_bytes": FLAT_TOLERANCE}
    if len(growth) == len(runs) and growth:
        out["growth_spread_bytes"] = max(growth) - min(growth)
        if all(r["images"] * r["num_masks"] > r["chunk_size"] for r in done):
            out["flat"] = out["growth_spread_bytes"] <= FLAT_TOLERANCE
        else:  # one chunk holds every pair: the chunk (so the memory) grows with num_masks by design
            out["flat"] = None
            out["flat_not_judged"] = "some setting fits in one chunk (quick sizes)"
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = benchmark_parser(__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"], choices=["cnn", "resnet"])
    parser.add_argument("--memory-images", type=int, default=None,
                        help="images for the RISE memory runs (default 20 on a CPU, 100 with --gpu)")
    parser.add_argument("--no-memory", action="store_true", help="skip the RISE memory runs")
    parser.add_argument("--out", default=None, help="result file stem (default perturbation_<backend>)")
    parser.add_argument("--rise-memory-child", nargs=2, type=int, metavar=("MASKS", "IMAGES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rise_memory_child:
        rise_memory_child(*args.rise_memory_child)
        return

    profile = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.gpu and jax.default_backend() == "cpu":
        print("--gpu on the CPU backend: running the GPU sizes on the CPU", flush=True)
    sizes, subsets = SIZES[profile], SUBSETS[profile]
    data = jaxviz.load_sample()
    count = max(v[key] for k, v in sizes.items() if k in args.models
                for key in ("images", "rise_images", "curve_images"))
    models = load_models(args.models, data.images, count)
    backend = jax.default_backend()
    record = {
        "claim": "fused >= 0.9x plain forward and >= 2x the per-mask Python loop (forwards/s, one run, equal "
                 "forwards); ablation vs Captum FeatureAblation; deletion+insertion 100 images x 100 steps x "
                 "10 classes; RISE memory flat in num_masks",
        "environment": environment(),
        "matmul_peak_gflops": matmul_peak(),
        "repeats": args.repeats,
        "slow_repeats": max(1, args.repeats // 2),
        "profile": profile,
        "quick": args.quick,
        "command": " ".join(["python -m benchmarks.perturbation", *sys.argv[1:]]),
        "images": "jaxviz.load_sample() (1,000 CIFAR-10 test images), repeated when more are needed",
        "counting": "forwards = what the output needs (base included for RISE, ablation, MuFidelity; a curve "
                    "is N * (steps + 1) per mode); loops run subsets of masks/steps/subsets over the same image "
                    "batch; Captum a subset of images",
        "models": {},
    }
    print(f"backend {backend}, profile {profile}, matmul peak {record['matmul_peak_gflops']:.0f} GFLOP/s",
          flush=True)
    for name, model in models.items():
        model_t, note = (None, "skipped (--no-captum)") if args.no_captum else port_to_torch(model)
        if model_t is None:
            print(f"{name}: Captum row left out: {note}", flush=True)
        record["models"][name] = bench_model(name, model, sizes[name], subsets[name], args.repeats, model_t, note,
                                             plain_batch(args.quick))

    if "cnn" in record["models"]:
        row = record["models"]["cnn"]["methods"]["deletion_insertion"]
        fused = row["rows"]["fused"]
        record["deletion_insertion_all_classes"] = {
            "model": "cnn", "images": row["images"], "steps": row["steps"], "outputs": row["outputs"],
            "targets": None, "forwards": fused["forwards"], "forwards_per_second": fused["forwards_per_second"],
            "wall_seconds_median": fused["median_seconds"], "wall_seconds_first_call": fused["first_call_seconds"]}
    if not args.no_memory:
        images = args.memory_images or MEMORY_IMAGES[profile]
        masks = tuple(max(2, m // 100) for m in MEMORY_MASKS) if args.quick else MEMORY_MASKS
        record["rise_memory"] = rise_memory(images, masks)

    stem = args.out or f"perturbation_{backend}" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))
    print(f"wrote {RESULTS / stem}.json and .md")


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"Perturbation benchmark ({record['profile']} sizes): {env['cpu']} ({env['cpu_count']} cores), "
             f"backend {env['jax_backend']} {env['devices'][0]}, jax {env['versions']['jax']}, torch "
             f"{env['versions']['torch']}, captum {env['versions']['captum']}, commit {env['git_commit'][:12]}"
             f"{'-dirty' if env['git_commit'].endswith('-dirty') else ''}, {env['date']}.",
             f"Matmul peak {record['matmul_peak_gflops']:.0f} GFLOP/s; median of {record['repeats']} runs after a "
             f"warm-up ({record['slow_repeats']} for loops and Captum). Forwards: what the output needs; loops run "
             "a subset of masks / steps / subsets over the same images, Captum a subset of images (target 0).", "",
             "| model | method | impl | images | forwards | forwards/s | GFLOP/s | median s | first call s "
             "| peak RSS +MB | fused ÷ impl |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in record["models"].items():
        for key, m in model["methods"].items():
            fused = m["rows"]["fused"]["forwards_per_second"]
            for impl, r in m["rows"].items():
                lines.append(f"| {name} | {key} | {impl} | {r['images']} | {r['forwards']:,} | "
                             f"{r['forwards_per_second']:,.0f} | {r['gflops']:.1f} | {r['median_seconds']:.3f} | "
                             f"{r['first_call_seconds']:.2f} | {r['peak_rss_increase_bytes'] / 2**20:,.0f} | "
                             f"{fused / r['forwards_per_second']:.2f} |")
    lines.append("")
    for name, model in record["models"].items():
        errors = {k: {c: f"{v:.1e}" for c, v in m["checks"].items()} for k, m in model["methods"].items()}
        lines.append(f"{name}: {model['flops_per_forward'] / 1e6:.1f} MFLOP/forward; Captum: {model['captum']}; "
                     f"max relative errors vs the engine: {errors}")
    if d := record.get("deletion_insertion_all_classes"):
        lines += ["", f"Deletion + insertion, CNN, {d['images']} images x {d['steps']} steps x {d['outputs']} "
                      f"outputs (targets=None): {d['forwards']:,} forwards in {d['wall_seconds_median']:.2f} s "
                      f"(median; first call {d['wall_seconds_first_call']:.2f} s), "
                      f"{d['forwards_per_second']:,.0f} forwards/s."]
    if mem := record.get("rise_memory"):
        verdict = ("incomplete (a run failed)" if "flat" not in mem else
                   f"not judged: {mem['flat_not_judged']}" if mem["flat"] is None else
                   "flat" if mem["flat"] else "NOT flat")
        lines += ["", f"RISE memory, CNN logits, {mem['images']} images, each in a fresh process "
                      f"(flat: growth spread <= {mem['flat_tolerance_bytes'] >> 20} MB; each peak includes "
                      f"compiling the program): {verdict}", "",
                  "| num_masks | peak RSS growth MB | peak RSS MB | device peak MB | chunk | seconds (with compile) "
                  "| masks array if built MB | perturbed images if built MB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mem["runs"]:
            if "error" in r:
                lines.append(f"| {r['num_masks']} | failed | | | | | | |")
                continue
            device = "" if r["device_peak_bytes"] is None else f"{r['device_peak_bytes'] / 2**20:,.0f}"
            lines.append(f"| {r['num_masks']} | {r['peak_rss_growth_bytes'] / 2**20:,.0f} | "
                         f"{r['peak_rss_bytes'] / 2**20:,.0f} | {device} | {r['chunk_size']} | "
                         f"{r['seconds_including_compile']:.1f} | {r['masks_array_bytes_if_materialized'] / 2**20:,.0f}"
                         f" | {r['perturbed_images_bytes_if_materialized'] / 2**20:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
