"""Gradient attributions' throughput vs Captum and vs a plain jitted gradient (the compute roof).

    python -m benchmarks.gradients [--quick] [--gpu] [--no-captum] [--out STEM] [--repeats R]

Claims (ratios of rates measured in one run; the pretrained CNN, the same weights ported to PyTorch for
Captum, ``tests/torch_port.py``; every ratio reported whichever way it falls):
  1. Integrated gradients (zero baseline, Gauss-Legendre, 50 steps) of 100 images, one target each
     (the predicted class): jaxviz reaches >= 0.85x the roof, a plain jitted ``jax.vjp`` of the
     logits with the one-hot targets as cotangent (``jax.grad`` of the sum of the target logits) over
     batches of the same (image, step) inputs, at the best of a few batch sizes (jaxviz's chunk among
     them); vs Captum ``IntegratedGradients`` at its best ``internal_batch_size``.
  2. The same for all 10 classes (``targets=None``: one forward and a vmapped backward per input)
     vs the roof (a vjp vmapped over the 10 one-hot cotangents) and Captum looping over the classes.
  3. Saliency for all 512 ``fc1`` units of 10 images vs the roof (a vjp vmapped over the 512
     one-hot cotangents, i.e. ``jax.jacrev``) and Captum ``Saliency`` looping over the units.
  4. Grad-CAM at ``conv6`` for all 512 ``fc1`` units of 10 images vs the roof (the vmapped vjp of
     fc1 with respect to conv6's activations, ``Network.perturbed_fn``) and Captum ``LayerGradCam``
     (on conv6's ReLU) + ``LayerAttribution.interpolate`` (bilinear) looping over the units.
  5. The cascading randomization test (saliency, IG 16 steps, Grad-CAM; 8 layers, so 9 parameter
     sets) on 50 images, the sets one after the other (``vmap_sets=False``, the CPU default) and
     vmapped (``vmap_sets=True``), vs the roof (as many plain input and layer gradients) and the same
     maps and Spearman correlations from Captum on each set ported to PyTorch.
  6. ``--gpu``: bigger sizes (1000 images for IG, 100 for the 512 units, 500 for the test), writes
     gradients_gpu.json when the default backend is a GPU; Captum still runs on the CPU there.

Counting: ``work`` is the gradients the output needs, one per (input, explained output): IG N x
steps x outputs, saliency and Grad-CAM N x units (Grad-CAM's with respect to the layer), the test
sets x N x (1 + steps + 1) (the last a layer gradient); rates are work per second. The roof runs
one device-resident batch of the workload's inputs, called ceil(rows / batch) times, each call
waited for (the gradients stay on the device), so its work is the workload's rounded up to whole
batches. Captum runs a subset of images (IG, the test) or of units (saliency, Grad-CAM), recorded
per row. Each timing: one warm-up call (its time is the first-call / compile time), then the median
of ``--repeats`` calls (1 for Captum, and for ``vmap_sets=True`` on a CPU), each ended by
``jax.block_until_ready``; jaxviz's results are numpy. Agreement: the max relative error of
jaxviz's attributions vs Captum's on Captum's subset (IG's comes from the smallest alphas, whose
nearly black inputs give gradients that differ between XLA and PyTorch; the other steps agree to
~3e-7), and for the test the max absolute difference of the Spearman correlations.

Sizes (``SIZES`` / ``CAPTUM`` below, recorded in the JSON): on a CPU the all-classes IG runs 10
images (100 x 50 x 10 gradients would take minutes per call on 2 cores) and ``vmap_sets=True`` 10
images (its grouped convolutions are several times slower on a CPU); meant to fit about 12 minutes
on a quiet 2-core CPU. Writes benchmarks/results/gradients_<backend>.json and .md.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxviz
from benchmarks._env import benchmark_parser, environment
from benchmarks.occlusion import RESULTS, take, timed
from benchmarks.perturbation import port_to_torch, rel_error, timed_keep
from jaxviz.evaluation.sanity import _absolute_maps, randomization_layers, randomized_variables, spearman
from jaxviz.methods.gradients import ig_coefficients

from torch_port import torch_cnn

METHODS = ("saliency", "ig", "gradcam")
CAM_LAYER, CAM_MODULE = "conv6", 19  # conv6's ReLU in torch_cnn's Sequential: (conv, bn, relu) x 2 + pool a block
BAR = 0.85

SIZES = {
    "cpu": dict(ig_images=100, steps=50, all_images=10, unit_images=10, test_images=50, vmap_images=10, test_steps=16),
    "gpu": dict(ig_images=1000, steps=50, all_images=1000, unit_images=100, test_images=500, vmap_images=500,
                test_steps=16),
    "quick": dict(ig_images=4, steps=8, all_images=2, unit_images=2, test_images=3, vmap_images=2, test_steps=4),
}
# Captum (on the CPU in every profile): images for IG and the test, units for saliency / Grad-CAM.
CAPTUM = {
    "cpu": dict(ig_images=20, ibs=(250, 500, 1000, 5000), all_images=5, units=32, test_images=10),
    "quick": dict(ig_images=2, ibs=(4, 16), all_images=1, units=2, test_images=2),
}
CAPTUM["gpu"] = CAPTUM["cpu"]
# Roof batch sizes tried (rows per call: (image, step) inputs for IG, images otherwise), jaxviz's chunk added.
ROOF = {
    "cpu": dict(ig=(128, 256), all=(16, 32), units=(1, 2), cam=(5, 10), test_cam=(50, 100)),
    "gpu": dict(ig=(1024, 4096, 16384), all=(256, 1024, 4096), units=(8, 32), cam=(25, 100), test_cam=(500, 2000)),
    "quick": dict(ig=(), all=(), units=(), cam=(), test_cam=(4,)),
}


# --------------------------------------------------------------------------- the roof


@functools.cache
def grad_program(fn, at_layer: bool):
    """Jitted ``(variables, x (b, ...), cots (U, b, K)) -> (U, b, ...)``: the pullback of each cotangent
    through ``fn(variables, x)`` with respect to x, or (``at_layer``) through ``fn(variables, x, delta)[1]``
    with respect to delta, the layer's activations, at 0. Nothing else: the compute roof."""

    def grads(variables, x, cots):
        if at_layer:
            acts = jax.eval_shape(lambda: fn(variables, x, 0.0)[0])
            _, pull = jax.vjp(lambda d: fn(variables, x, d)[1], jnp.zeros(acts.shape, x.dtype))
        else:
            _, pull = jax.vjp(lambda z: fn(variables, z), x)
        return jax.vmap(lambda c: pull(c)[0])(cots)

    return jax.jit(grads)


def one_hot_cots(targets: np.ndarray, width: int):
    return lambda b: jax.nn.one_hot(jnp.asarray(targets[:b]), width)[None]  # (1, b, K): each row's target


def all_cots(width: int):
    return lambda b: jnp.broadcast_to(jnp.eye(width, dtype=jnp.float32)[:, None], (width, b, width))


def roof_loop(program, variables, pool, cots, batch: int, rows: int):
    """``ceil(rows / batch)`` calls on one device-resident batch, each waited for (its result, as big as
    the inputs times U, stays on the device, as jaxviz's running sums do)."""
    xb, cb = jax.device_put(pool[:batch]), cots(batch)
    calls = -(-rows // batch)

    def run():
        for _ in range(calls):
            out = jax.block_until_ready(program(variables, xb, cb))
        return out

    return run, calls * batch * cb.shape[0], calls


def best_batch(program, variables, pool, cots, batches, rows: int) -> tuple[int, dict]:
    """The batch size (of ``batches``, capped by the rows and the pool) with the best rate over 2 calls
    (one that runs out of memory is recorded and left out)."""
    trial = {}
    for b in sorted({min(b, rows, len(pool)) for b in batches}):
        try:
            run, _, _ = roof_loop(program, variables, pool, cots, b, 2 * b)
            start = time.perf_counter()
            roof_loop(program, variables, pool, cots, b, 1)[0]()
            first = time.perf_counter() - start
            start = time.perf_counter()
            run()
            trial[b] = {"rows_per_second": 2 * b / (time.perf_counter() - start), "first_call_seconds": first}
        except jax.errors.JaxRuntimeError as e:
            trial[b] = {"rows_per_second": 0.0, "error": str(e)[:300]}
    return max(trial, key=lambda b: trial[b]["rows_per_second"]), trial


def roof(program, variables, pool, cots, batches, rows: int, repeats: int) -> dict:
    batch, trial = best_batch(program, variables, pool, cots, batches, rows)
    run, work, calls = roof_loop(program, variables, pool, cots, batch, rows)
    return {**timed(run, repeats), "batch": batch, "calls": calls, "batch_trials": trial, "work": work}


# --------------------------------------------------------------------------- Captum


def nchw(x: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def captum_ig(model_t, x, targets, steps: int, ibs_values, repeats: int) -> tuple[dict, np.ndarray]:
    """Captum IntegratedGradients (zero baseline, Gauss-Legendre) at its best internal_batch_size among
    ``ibs_values`` (tried once each on these images, after a warm-up call); one call per entry of
    ``targets`` (an int or (N,)), the attributions stacked on a last axis."""
    import torch
    from captum.attr import IntegratedGradients

    ig, xt = IntegratedGradients(model_t), nchw(x)
    calls = [torch.from_numpy(np.asarray(t, np.int64)) if np.ndim(t) else int(t) for t in targets]
    run = lambda ibs: np.stack([nhwc(ig.attribute(xt, target=t, n_steps=steps, internal_batch_size=ibs))
                                for t in calls], axis=-1)
    values = sorted({min(v, len(x) * steps) for v in ibs_values if v >= len(x)}) or [len(x) * steps]
    trial = {}
    if len(values) > 1:
        run(values[0])  # torch's warm-up, before the trials
    for ibs in values if len(values) > 1 else ():
        start = time.perf_counter()
        run(ibs)
        trial[ibs] = time.perf_counter() - start
    best = min(trial, key=trial.get) if trial else values[0]
    r, attr = timed_keep(lambda: run(best), repeats)
    r.update(internal_batch_size=best, trial_seconds=trial)
    return r, attr


def captum_units(model_t, x, units: int, cam: bool, repeats: int) -> tuple[dict, np.ndarray]:
    """Captum Saliency (abs) or LayerGradCam (relu) + bilinear interpolate, looping over units 0..units-1."""
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    xt, size = nchw(x), x.shape[1:3]
    if cam:
        method = LayerGradCam(model_t, model_t[CAM_MODULE])
        one = lambda u: LayerAttribution.interpolate(method.attribute(xt, target=u, relu_attributions=True),
                                                     size, "bilinear")[:, 0].detach().numpy()
    else:
        method = Saliency(model_t)
        one = lambda u: nhwc(method.attribute(xt, target=u, abs=True))
    return timed_keep(lambda: np.stack([one(u) for u in range(units)], axis=-1), repeats)


def captum_test(weights, stacked, x, targets, steps: int, ibs: int) -> dict:
    """The randomization test's maps and correlations from Captum, each parameter set ported to PyTorch."""
    import torch
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    xt, tt = nchw(x), torch.from_numpy(np.asarray(targets, np.int64))
    maps = {m: [] for m in METHODS}
    for j in range(jax.tree_util.tree_leaves(stacked)[0].shape[0]):
        model_t = torch_cnn(weights.model, jax.tree_util.tree_map(lambda a, j=j: np.array(a[j]), stacked),
                            layer="logits")
        maps["saliency"].append(nhwc(Saliency(model_t).attribute(xt, target=tt, abs=True)))
        maps["ig"].append(nhwc(IntegratedGradients(model_t).attribute(xt, target=tt, n_steps=steps,
                                                                       internal_batch_size=ibs)))
        cam = LayerGradCam(model_t, model_t[CAM_MODULE]).attribute(xt, target=tt)
        maps["gradcam"].append(LayerAttribution.interpolate(cam, x.shape[1:3], "bilinear")[:, 0].detach().numpy())
    flat = {m: _absolute_maps(np.stack(v), channels=m != "gradcam") for m, v in maps.items()}
    return {m: spearman(f[0], f[1:]) for m, f in flat.items()}


# --------------------------------------------------------------------------- workloads


def row(r: dict, impl: str, n: int, work: int, **extra) -> dict:
    r.update(implementation=impl, n=n, work=int(work), rate=work / r["median_seconds"], **extra)
    print(f"    {impl}: {work:,} gradients, {r['rate']:,.0f}/s (median {r['median_seconds']:.2f} s, first call "
          f"{r['first_call_seconds']:.2f} s)", flush=True)
    return r


def finish(w: dict, jaxviz_rows=("jaxviz",)) -> dict:
    roof_rate = w["rows"]["roof"]["rate"]
    captum = w["rows"].get("captum", {}).get("rate")
    for r in w["rows"].values():
        r["ratio_vs_roof"] = r["rate"] / roof_rate
        r["ratio_vs_captum"] = None if captum is None else r["rate"] / captum
    error = next((v for k, v in w["checks"].items() if "captum" in k), None)
    for k in jaxviz_rows:
        w["rows"][k]["error_vs_captum"] = error
    w["bars"] = {f"{k} / roof >= {BAR}": w["rows"][k]["ratio_vs_roof"] >= BAR for k in jaxviz_rows}
    return w


def run_all(args, profile: str) -> dict:
    sizes, cap, roofs = SIZES[profile], CAPTUM[profile], ROOF[profile]
    weights = jaxviz.load_pretrained()
    net = weights.network
    variables = jax.device_put(weights.variables)
    f, f1 = net.layer_fn("logits"), net.layer_fn("fc1")
    images = take(jaxviz.load_sample().images, max(v for k, v in sizes.items() if k.endswith("images")))
    x_all = net.to_input(images)
    predicted = np.asarray(jax.jit(f)(variables, x_all)).argmax(-1)
    ports = {}
    for layer, fn in (("logits", f), ("fc1", f1)):
        model = dict(torch=lambda layer=layer: torch_cnn(weights.model, weights.variables, layer=layer),
                     x=x_all, f=fn, variables=variables)
        ports[layer] = (None, "skipped (--no-captum)") if args.no_captum else port_to_torch(model)
    captum_note = {layer: note for layer, (_, note) in ports.items()}
    slow, rep = 1, args.repeats
    out = {}

    # 1, 2: integrated gradients, one target (the predicted class) / all 10 classes
    steps = sizes["steps"]
    alphas, _ = ig_coefficients(steps)
    for key, n, targets in (("ig_one_target", sizes["ig_images"], True), ("ig_all_classes", sizes["all_images"], False)):
        print(f"{key}: {n} images x {steps} steps", flush=True)
        x, t = x_all[:n], predicted[:n]
        units = 1 if targets else 10
        w = out[key] = dict(images=n, steps=steps, outputs=units, targets="predicted class" if targets else None,
                            work="(image, step, class) gradients", rows={}, checks={})
        r, res = timed_keep(lambda x=x, t=t if targets else None: jaxviz.integrated_gradients(
            f, x, n_steps=steps, params=variables, targets=t), rep)
        w["rows"]["jaxviz"] = row(r, "jaxviz", n, n * steps * units, chunk_size=res.chunk_size)
        pool_images = min(n, -(-max((*roofs["ig" if targets else "all"], res.chunk_size)) // steps))
        pool = (x[:pool_images, None] * alphas[None, :, None, None, None]).reshape(-1, *x.shape[1:])
        cots = one_hot_cots(np.repeat(t[:pool_images], steps), 10) if targets else all_cots(10)
        batches = (*roofs["ig" if targets else "all"], res.chunk_size)
        r = roof(grad_program(f, False), variables, pool, cots, batches, n * steps, rep)
        w["rows"]["roof"] = row(r, "roof", n, r["work"])
        model_t = ports["logits"][0]
        if model_t is not None:
            kc = min(n, cap["ig_images" if targets else "all_images"])
            ibs = cap["ibs"] if targets else (out["ig_one_target"]["rows"]["captum"]["internal_batch_size"],)
            r, attr = captum_ig(model_t, x[:kc], [t[:kc]] if targets else range(10), steps, ibs, slow)
            w["rows"]["captum"] = row(r, "captum", kc, kc * steps * units)
            got = res.attributions[:kc] if not targets else res.attributions[:kc, ..., None]
            w["checks"]["max_relative_error_vs_captum"] = rel_error(got, attr)
        finish(w)

    # 3, 4: saliency and Grad-CAM for every fc1 unit
    n = sizes["unit_images"]
    x = x_all[:n]
    width = net.output_shape("fc1")[-1]
    cam_fn = net.perturbed_fn(CAM_LAYER, "fc1")
    for key, cam in (("saliency_fc1_units", False), ("gradcam_fc1_units", True)):
        print(f"{key}: {n} images x {width} units", flush=True)
        w = out[key] = dict(images=n, units=width, layer=CAM_LAYER if cam else None, output_layer="fc1",
                            work="(image, unit) gradients" + (f" with respect to {CAM_LAYER}" if cam else ""),
                            rows={}, checks={})
        call = ((lambda: jaxviz.grad_cam(net, x, layer=CAM_LAYER, output_layer="fc1")) if cam else
                (lambda: jaxviz.saliency(f1, x, params=variables)))
        r, res = timed_keep(call, rep)
        w["rows"]["jaxviz"] = row(r, "jaxviz", n, n * width, chunk_size=res.chunk_size)
        r = roof(grad_program(cam_fn if cam else f1, cam), variables, x, all_cots(width),
                    (*roofs["cam" if cam else "units"], res.chunk_size), n, rep)
        w["rows"]["roof"] = row(r, "roof", n, r["work"])
        model_t = ports["fc1"][0]
        if model_t is not None:
            units = min(width, cap["units"])
            r, attr = captum_units(model_t, x, units, cam, slow)
            w["rows"]["captum"] = row(r, "captum", n, n * units, units_run=units)
            w["checks"]["max_relative_error_vs_captum"] = rel_error(res.attributions[..., :units], attr)
        finish(w)

    # 5: the cascading randomization test
    steps = sizes["test_steps"]
    layers = randomization_layers(net)
    sets = len(layers) + 1
    per_image = sets * (1 + steps + 1)
    n = sizes["test_images"]
    print(f"randomization_test: {n} images, {sets} parameter sets, methods {', '.join(METHODS)}", flush=True)
    w = out["randomization_test"] = dict(
        images=n, vmap_images=sizes["vmap_images"], sets=sets, layers=layers, mode="cascading", methods=METHODS,
        n_steps=steps, work="(set, image, sample) gradients: saliency 1, IG n_steps, Grad-CAM 1 (at its layer)",
        rows={}, checks={})
    test = lambda k, vmap: jaxviz.randomization_test(net, images[:k], methods=METHODS, n_steps=steps,
                                                     vmap_sets=vmap)
    r, check = timed_keep(lambda: test(n, False), rep)
    w["rows"]["jaxviz"] = row(r, "jaxviz", n, n * per_image, vmap_sets=False)
    nv = sizes["vmap_images"]
    r, check_v = timed_keep(lambda: test(nv, True), rep if profile == "gpu" else slow)
    w["rows"]["jaxviz_vmap_sets"] = row(r, "jaxviz_vmap_sets", nv, nv * per_image, vmap_sets=True)
    w["checks"]["max_abs_difference_vmap_vs_sequential"] = max(float(np.nanmax(np.abs(
        check_v.correlations[m] - check.correlations[m][:, :nv]))) for m in METHODS)
    w["mean_correlations"] = {m: v.tolist() for m, v in check.mean().items()}
    t = np.asarray(check.targets)
    rows = n * sets * (steps + 1)  # input gradients; then n * sets layer gradients
    batch = min(out["ig_one_target"]["rows"]["roof"]["batch"], rows)
    inputs_run, input_work, _ = roof_loop(grad_program(f, False), variables, take(x_all[:n], batch),
                                          one_hot_cots(take(t, batch), 10), batch, rows)
    cam_logits = grad_program(net.perturbed_fn(CAM_LAYER, "logits"), True)
    pool, cots = take(x_all[:n], max(roofs["test_cam"])), one_hot_cots(take(t, max(roofs["test_cam"])), 10)
    cam_batch, trial = best_batch(cam_logits, variables, pool, cots, (*roofs["test_cam"], n), n * sets)
    layer_run, layer_work, _ = roof_loop(cam_logits, variables, pool, cots, cam_batch, n * sets)
    r = timed(lambda: (inputs_run(), layer_run()), rep)
    r.update(input_batch=batch, layer_batch=cam_batch, layer_batch_trials=trial)
    w["rows"]["roof"] = row(r, "roof", n, input_work + layer_work)
    if ports["logits"][0] is not None:
        kc = min(n, cap["test_images"])
        stacked, _ = randomized_variables(net, layers)
        ibs = out["ig_one_target"]["rows"]["captum"]["internal_batch_size"]
        r, corr = timed_keep(lambda: captum_test(weights, stacked, x_all[:kc], t[:kc], steps, ibs), slow)
        w["rows"]["captum"] = row(r, "captum", kc, kc * per_image, internal_batch_size=ibs)
        w["checks"]["max_abs_correlation_difference_vs_captum"] = max(float(np.nanmax(np.abs(
            corr[m] - check.correlations[m][:, :kc]))) for m in METHODS)
    finish(w, ("jaxviz", "jaxviz_vmap_sets"))
    return {"captum": captum_note, "workloads": out}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = benchmark_parser(__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="file stem or path, no suffix (default gradients_<backend>)")
    args = parser.parse_args()
    profile = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    args.repeats = args.repeats or (1 if args.quick else 3)
    backend = jax.default_backend()
    if args.gpu and backend == "cpu":
        print("--gpu on the CPU backend: running the GPU sizes on the CPU", flush=True)
    print(f"backend {backend}, profile {profile}", flush=True)
    start = time.perf_counter()
    record = {
        "claim": f"jaxviz >= {BAR}x the plain jitted gradient (the roof) for IG (one target / all classes), "
                 "saliency and Grad-CAM for all fc1 units and the cascading randomization test; vs Captum at its "
                 "best internal_batch_size on the same weights (the measured ratios, whichever way they fall)",
        "environment": environment(),
        "repeats": args.repeats, "slow_repeats": 1, "profile": profile,
        "command": " ".join(["python -m benchmarks.gradients", *sys.argv[1:]]),
        "sizes": SIZES[profile], "captum_subsets": CAPTUM[profile], "roof_batches": ROOF[profile],
        "images": "jaxviz.load_sample() (1,000 CIFAR-10 test images), repeated when more are needed",
        **run_all(args, profile),
    }
    record["total_seconds"] = time.perf_counter() - start
    stem = args.out or f"gradients_{backend}" + ("_quick" if args.quick else "")
    path = RESULTS / stem  # an absolute --out replaces RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    jaxviz.atomic_write_bytes(path.with_name(path.name + ".json"), (json.dumps(record, indent=2) + "\n").encode())
    jaxviz.atomic_write_bytes(path.with_name(path.name + ".md"), markdown(record).encode())
    print(markdown(record))
    print(f"wrote {path}.json and .md ({record['total_seconds']:.0f} s)")


LABELS = {"ig_one_target": "IG, one target", "ig_all_classes": "IG, all 10 classes",
          "saliency_fc1_units": "saliency, every fc1 unit", "gradcam_fc1_units": "Grad-CAM (conv6), every fc1 unit",
          "randomization_test": "randomization test"}


def markdown(record: dict) -> str:
    env = record["environment"]
    commit = env["git_commit"]
    lines = [f"Gradient benchmark ({record['profile']} sizes): {env['cpu']} ({env['cpu_count']} cores), backend "
             f"{env['jax_backend']} {env['devices'][0]}, jax {env['versions']['jax']}, torch {env['versions']['torch']}"
             f", captum {env['versions']['captum']}, commit {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}"
             f", {env['date']}; {record['total_seconds']:.0f} s in all.",
             f"Rates: gradients/s (one per input and explained output); median of {record['repeats']} calls after a "
             "warm-up (1 for Captum, and vmap_sets=True on a CPU). Roof: a plain jitted vjp over the same inputs at its best "
             "batch; Captum on a subset of images (IG, the test) or units (saliency, Grad-CAM), on the CPU.", "",
             "| workload | n | gradients | jaxviz /s | median s | first call s | chunk | roof /s | ÷ roof "
             "| Captum /s | ÷ Captum | error vs Captum |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, w in record["workloads"].items():
        roof_rate, captum = w["rows"]["roof"]["rate"], w["rows"].get("captum")
        for impl in ("jaxviz", "jaxviz_vmap_sets"):
            if (r := w["rows"].get(impl)) is None:
                continue
            label = LABELS[key] + (f" (vmap_sets={r['vmap_sets']})" if "vmap_sets" in r else "")
            ratio = "" if captum is None else f"{r['ratio_vs_captum']:.2f}"
            lines.append(f"| {label} | {r['n']} | {r['work']:,} | {r['rate']:,.0f} | {r['median_seconds']:.2f} | "
                         f"{r['first_call_seconds']:.2f} | {r.get('chunk_size', '')} | {roof_rate:,.0f} | "
                         f"{r['ratio_vs_roof']:.2f} | {'' if captum is None else format(captum['rate'], ',.0f')} | "
                         f"{ratio} | {'' if r['error_vs_captum'] is None else format(r['error_vs_captum'], '.1e')} |")
    lines.append("")
    notes = ["Error vs Captum: the max relative error of the attributions on Captum's subset; for the test, the "
             "max absolute difference of the Spearman correlations"]
    for key, w in record["workloads"].items():
        roof, captum = w["rows"]["roof"], w["rows"].get("captum")
        batch = roof.get("batch", f"{roof.get('input_batch')} inputs + {roof.get('layer_batch')} at the layer")
        subset = "" if captum is None else f"; Captum on {captum['n']} images" + (
            f" x {captum['units_run']} units" if "units_run" in captum else "")
        notes.append(f"{LABELS[key]}: roof batch {batch}{subset}")
    if "captum" in (ig := record["workloads"]["ig_one_target"]["rows"]):
        notes.append(f"Captum IG best internal_batch_size {ig['captum']['internal_batch_size']} (trials "
                     + ", ".join(f"{k}: {v:.2f} s" for k, v in ig["captum"]["trial_seconds"].items()) + ")")
    test = record["workloads"]["randomization_test"]
    notes.append("randomization test errors: " + ", ".join(f"{k} {v:.1e}" for k, v in test["checks"].items()))
    notes.append(f"Captum: {record['captum']}")
    return "\n".join(lines + [f"{s}." for s in notes]) + "\n"


if __name__ == "__main__":
    main()
