"""Feature visualization of every unit of a layer: time, unit-steps per second, the ratio to a roof, and how
often the picture beats the unit's best real image.

    python -m benchmarks.feature_vis                     # conv6 (128 channels) and fc1 (512 units), 512 steps
    python -m benchmarks.feature_vis --layers fc1 --units 64 --steps 128
    python -m benchmarks.feature_vis --dry-run           # tiny sizes, nothing written (a test runs it on the CPU)

Claim: ``jaxviz.visualize`` (Fourier image, decorrelated colours, the standard transforms, redirected ReLU)
runs at >= 0.8 of a roof: a plain jitted Adam ``lax.scan`` of ``value_and_grad`` of the same objective over
the same batch of pixel images, without parameterization or transforms. Compile time is measured apart
(the first call); the timed call is the second, ``block_until_ready`` by returning numpy arrays. The share of
live units whose visualization exceeds their best image (``exemplar_ratio > 1``) is over the images given
(``--data cifar10`` reads the 10,000 test images from ``--data-dir``; default: the embedded sample).
Writes benchmarks/results/feature_vis_<backend>.json.
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


def measure(network: jaxviz.Network, images: np.ndarray, layer: str, units: int | None, steps: int) -> dict:
    width = network.num_units(layer)
    chosen = list(range(width if units is None else min(units, width)))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        vis = jaxviz.visualize(network, layer, chosen, steps=steps)
        times.append(time.perf_counter() - start)
    roof_first, roof = roof_seconds(network, layer, len(chosen), steps, 0.05)
    top = jaxviz.top_k_images(jaxviz.unit_scores(jaxviz.layer_features(network, images, layer=layer)), 1)
    ratio = vis.exemplar_ratio(top)
    live = np.isfinite(ratio)
    return {"layer": layer, "units": len(chosen), "steps": steps, "first_call_seconds": times[0],
            "seconds": times[1], "unit_steps_per_second": len(chosen) * steps / times[1],
            "roof_first_call_seconds": roof_first, "roof_seconds": roof, "ratio_to_roof": roof / times[1],
            "images_for_exemplars": len(images), "live_units": int(live.sum()),
            "share_of_live_units_above_best_image": float(np.mean(ratio[live] > 1)) if live.any() else None,
            "exemplar_ratio_median": float(np.median(ratio[live])) if live.any() else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv6,fc1")
    parser.add_argument("--units", type=int, help="the first N units of each layer (default: all)")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--data", choices=("sample", "cifar10"), default="sample")
    parser.add_argument("--data-dir")
    parser.add_argument("--dry-run", action="store_true", help="2 units, 3 steps, 20 images; nothing written")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    network = jaxviz.load_pretrained().network
    if args.dry_run:
        images, units, steps = jaxviz.load_sample().images[:20], 2, 3
    else:
        data = jaxviz.load_sample() if args.data == "sample" else jaxviz.load_cifar10("test", data_dir=args.data_dir)
        images, units, steps = data.images, args.units, args.steps
    rows = []
    for layer in args.layers.split(","):
        rows.append(measure(network, images, layer, units, steps))
        print(json.dumps(rows[-1]), flush=True)
    record = {"claim": "jaxviz.visualize draws every unit of a layer at >= 0.8 of a plain jitted value_and_grad "
                       "loop's speed (ratio_to_roof)", "rows": rows, "environment": environment(),
              "command": " ".join(["python -m benchmarks.feature_vis", *argv])}
    if not args.dry_run:
        out = Path(__file__).resolve().parent / "results" / f"feature_vis_{jax.default_backend()}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
