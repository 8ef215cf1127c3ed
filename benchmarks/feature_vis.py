"""Feature visualization of every unit of a layer: time, unit-steps per second, the ratio to a roof, and how
often the picture beats the unit's best real image.

    python -m benchmarks.feature_vis                     # conv6 (128 channels) and fc1 (512 units), 512 steps
    python -m benchmarks.feature_vis --data folder --data-dir DIR   # exemplars from DIR (the CIFAR-10 test set)
    python -m benchmarks.feature_vis --layers fc1 --units 64 --steps 128
    python -m benchmarks.feature_vis --gpu               # on a GPU: every fc1 unit, 512 steps, all timed
    python -m benchmarks.feature_vis --dry-run           # tiny sizes, nothing written (a test runs it on the CPU)

Claim: ``jaxviz.visualize`` (Fourier image, decorrelated colours, the standard transforms, redirected ReLU)
runs at >= 0.8 of a roof: a plain jitted Adam ``lax.scan`` of ``value_and_grad`` of the same objective over
the same batch of pixel images, without parameterization or transforms. The ratio is timed on
``--timed-units`` units at ``--timed-steps`` steps (a per-unit-step rate; on a CPU the whole layers at 512
steps take most of an hour, so they run once): compile time apart (the first call), the timed call the
second, ``block_until_ready`` by returning numpy arrays. Every chosen unit then runs at ``--steps`` in one
call (compile included), for the share of live units whose visualization exceeds their best image
(``exemplar_ratio > 1``) among the images given (default: the embedded sample). Goal on one H100/H200
(``--gpu``): every fc1 unit at 512 steps in under 10 s.
Writes benchmarks/results/feature_vis_<backend>[_gpu].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxviz
from benchmarks._env import environment


def roof_seconds(network: jaxviz.Network, layer: str, units: int, steps: int, lr: float) -> tuple[float, float]:
    """(compile + first run, second run) seconds of the plain loop: pixel images (units, H, W, C), the channel
    objective of unit u on image u, Adam, ``lax.scan``."""
    fn, spec = network.layer_fn(layer), network.input_spec
    index = jnp.arange(units)

    def objective(pixels):
        acts = fn(network.variables, spec.from_pixels(pixels))
        flat = acts.reshape(units, -1, acts.shape[-1])
        return -jnp.sum(jnp.mean(flat[index, :, index], axis=1))

    optimizer = optax.adam(lr)

    @jax.jit
    def run(pixels):
        def step(carry, _):
            p, state = carry
            value, grads = jax.value_and_grad(objective)(p)
            updates, state = optimizer.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), value
        (p, _), trace = jax.lax.scan(step, (pixels, optimizer.init(pixels)), None, length=steps)
        return p, trace

    pixels = jnp.full((units, *spec.shape), 0.5, jnp.float32)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.tree_util.tree_map(np.asarray, run(pixels))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def measure(network: jaxviz.Network, images: np.ndarray, layer: str, units: int | None, steps: int,
            timed_units: int, timed_steps: int) -> dict:
    """One layer: every chosen unit at ``steps`` in one call (compile included) for the seconds and the exemplar
    ratios; the ratio to the roof on the first ``timed_units`` units at ``timed_steps`` (second calls, compile
    apart), a per-unit-step rate that the number of units and steps does not change."""
    width = network.num_units(layer)
    chosen = list(range(width if units is None else min(units, width)))
    timed = chosen[:timed_units]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jaxviz.visualize(network, layer, timed, steps=timed_steps)
        times.append(time.perf_counter() - start)
    roof_first, roof = roof_seconds(network, layer, len(timed), timed_steps, 0.05)
    start = time.perf_counter()
    vis = jaxviz.visualize(network, layer, chosen, steps=steps)  # numpy out: blocked until ready
    all_seconds = time.perf_counter() - start
    top = jaxviz.top_k_images(jaxviz.unit_scores(jaxviz.layer_features(network, images, layer=layer)), 1)
    ratio = vis.exemplar_ratio(top)
    live = np.isfinite(ratio)
    return {"layer": layer, "units": len(chosen), "steps": steps, "seconds_compile_included": all_seconds,
            "unit_steps_per_second": len(chosen) * steps / all_seconds,
            "timed_units": len(timed), "timed_steps": timed_steps, "first_call_seconds": times[0],
            "seconds": times[1], "timed_unit_steps_per_second": len(timed) * timed_steps / times[1],
            "roof_first_call_seconds": roof_first, "roof_seconds": roof, "ratio_to_roof": roof / times[1],
            "images_for_exemplars": len(images), "live_units": int(live.sum()),
            "share_of_live_units_above_best_image": float(np.mean(ratio[live] > 1)) if live.any() else None,
            "exemplar_ratio_median": float(np.median(ratio[live])) if live.any() else None,
            "exemplar_ratio": [None if not np.isfinite(r) else float(r) for r in ratio]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv6,fc1")
    parser.add_argument("--units", type=int, help="the first N units of each layer (default: all)")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--timed-units", type=int, default=32, help="units of the timed calls and the roof")
    parser.add_argument("--timed-steps", type=int, default=128, help="steps of the timed calls and the roof")
    parser.add_argument("--data", choices=("sample", "folder"), default="sample",
                        help="the images of the exemplar ratio: the embedded sample, or an image folder (--data-dir; "
                             "e.g. the 10,000 CIFAR-10 test images: DIR/<class>/*.jpg)")
    parser.add_argument("--data-dir")
    parser.add_argument("--gpu", action="store_true", help="the GPU claim: every fc1 unit at 512 steps, all timed")
    parser.add_argument("--dry-run", action="store_true", help="2 units, 3 steps, 20 images; nothing written")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    network = jaxviz.load_pretrained().network
    data = jaxviz.load_sample() if args.data == "sample" else jaxviz.load_image_folder(args.data_dir)
    layers, units, steps, timed_units, timed_steps = (args.layers.split(","), args.units, args.steps,
                                                      args.timed_units, args.timed_steps)
    if args.gpu:
        layers, units, steps, timed_units, timed_steps = ["fc1"], None, 512, 512, 512
    images = data.images
    if args.dry_run:
        images, units, steps, timed_units, timed_steps = images[:20], 2, 3, 2, 3
    rows = []
    for layer in layers:
        rows.append(measure(network, images, layer, units, steps, timed_units, timed_steps))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "exemplar_ratio"}), flush=True)
    record = {"claim": "jaxviz.visualize draws every unit of a layer at >= 0.8 of a plain jitted value_and_grad "
                       "loop's speed (ratio_to_roof)", "rows": rows, "environment": environment(),
              "command": " ".join(["python -m benchmarks.feature_vis", *argv])}
    if not args.dry_run:
        name = f"feature_vis_{jax.default_backend()}{'_gpu' if args.gpu else ''}.json"
        out = Path(__file__).resolve().parent / "results" / name
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
