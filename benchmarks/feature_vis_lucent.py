"""Feature visualization beside a peer: torch-lucent 0.1.8 on the same CNN ported to PyTorch, same machine, same run.

    python -m benchmarks.feature_vis_lucent              # 32 conv6 channels, 512 steps
    python -m benchmarks.feature_vis_lucent --dry-run    # 2 channels, 3 steps, nothing written

Needs the peer beside jaxviz, in its own environment (never a plain ``torch``: that pulls a CUDA build):
``python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 torch-lucent==0.1.8 -e .``.

Claim: jaxviz draws 32 ``conv6`` channels at 512 steps >= 3x faster than Lucent, used as its README shows
(``render_vis`` once per channel, its default Fourier image with decorrelated colours, its standard
transforms, Adam at lr 0.05), with ``fixed_image_size=32`` so that Lucent does not upsample to 224 px and
``preprocess=False`` since the CNN takes pixels in [0, 1]. jaxviz runs its defaults (``visualize(net,
"conv6", range(32), steps=512)``). Settings that differ, by design of each tool: Lucent's transforms are
its 224-px set (pad 12, jitter 8, scale, rotate, jitter 4) and its colour matrix ImageNet's; jaxviz scales
its transforms to 32 px, takes the colour matrix of the CIFAR-10 sample and redirects the ReLU gradient.
jaxviz's compile time is measured apart (its first call); the timed call is its second. Both tools' pictures
are scored by the same JAX forward pass: each channel's mean activation on the picture over its largest on
the 1,000 sample images (the exemplar ratio). The port's logits equal jaxviz's to 1e-5 (checked first).
Writes benchmarks/results/feature_vis_lucent_<backend>.json and docs/images/lucent_vs_jaxviz.png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxviz
from benchmarks._env import environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from torch_port import torch_cnn  # noqa: E402

CONV6_RELU = 19  # conv6's ReLU in torch_cnn's Sequential: (conv, bn, relu) x 2 + pool a block


def port(weights) -> tuple[object, float]:
    """The pretrained CNN in PyTorch up to fc1 (conv6 inside), checked against jaxviz on 16 sample images."""
    import torch

    model = torch_cnn(weights.model, weights.variables, layer="fc1")
    images = jaxviz.load_sample().images[:16]
    want = np.asarray(jaxviz.layer_features(weights.network, images, layer="fc1"))
    with torch.no_grad():
        got = model(torch.from_numpy(np.ascontiguousarray(weights.network.to_input(images).transpose(0, 3, 1, 2))))
    error = float(np.abs(got.numpy() - want).max() / np.abs(want).max())
    if error > 1e-5:
        raise SystemExit(f"the torch port differs from jaxviz: relative error {error:.1e} > 1e-5")
    return model, error


def lucent_images(model, channels: list[int], steps: int) -> tuple[np.ndarray, list[float]]:
    """uint8 (channels, 32, 32, 3) from one ``render_vis`` call per channel, and each call's seconds."""
    from lucent.optvis import param, render

    images, seconds = [], []
    for c in channels:
        start = time.perf_counter()
        out = render.render_vis(model, f"{CONV6_RELU}:{c}", param_f=lambda: param.image(32), thresholds=(steps,),
                                preprocess=False, fixed_image_size=32, show_image=False, progress=False)
        seconds.append(time.perf_counter() - start)
        images.append(np.round(np.clip(out[-1][0], 0, 1) * 255).astype(np.uint8))
    return np.stack(images), seconds


def exemplar_ratios(network: jaxviz.Network, images: np.ndarray, channels: list[int], best: np.ndarray) -> np.ndarray:
    """Each channel's mean activation on its picture over its largest mean activation on the sample."""
    acts = jaxviz.unit_scores(jaxviz.layer_features(network, images, layer="conv6"))  # (channels, 128)
    return acts[np.arange(len(channels)), channels] / best[channels]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=32, help="the first N conv6 channels")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true", help="2 channels, 3 steps; nothing written")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    channels, steps = (list(range(2)), 3) if args.dry_run else (list(range(args.channels)), args.steps)
    weights = jaxviz.load_pretrained()
    network = weights.network
    model, port_error = port(weights)
    best = jaxviz.unit_scores(jaxviz.layer_features(network, jaxviz.load_sample().images, layer="conv6")).max(0)

    start = time.perf_counter()
    jaxviz.visualize(network, "conv6", channels, steps=steps)
    jax_first = time.perf_counter() - start
    start = time.perf_counter()
    vis = jaxviz.visualize(network, "conv6", channels, steps=steps)  # numpy out: blocked until ready
    jax_seconds = time.perf_counter() - start

    lucent, lucent_calls = lucent_images(model, channels, steps)
    lucent_seconds = float(sum(lucent_calls))
    ours, theirs = (exemplar_ratios(network, im, channels, best) for im in (vis.images[:, 0], lucent))
    record = {
        "claim": "jaxviz draws 32 conv6 channels at 512 steps >= 3x faster than torch-lucent 0.1.8 (render_vis per "
                 "channel), same machine, same run",
        "channels": len(channels), "steps": steps, "port_relative_error": port_error,
        "jaxviz_first_call_seconds": jax_first, "jaxviz_seconds": jax_seconds,
        "lucent_seconds": lucent_seconds, "lucent_seconds_per_channel_median": float(np.median(lucent_calls)),
        "speedup": lucent_seconds / jax_seconds, "speedup_with_compile": lucent_seconds / jax_first,
        "jaxviz_exemplar_ratio_median": float(np.median(ours)), "lucent_exemplar_ratio_median": float(np.median(theirs)),
        "jaxviz_share_above_best_image": float(np.mean(ours > 1)), "lucent_share_above_best_image": float(np.mean(theirs > 1)),
        "jaxviz_exemplar_ratio": ours.tolist(), "lucent_exemplar_ratio": theirs.tolist(),
        "settings": {"jaxviz": vis.settings, "lucent": {"param": "param.image(32): fft, decorrelate=True (ImageNet)",
                                                        "transforms": "standard_transforms (224-px set)",
                                                        "optimizer": "Adam lr 0.05", "preprocess": False,
                                                        "fixed_image_size": 32}},
        "environment": {**environment(), "lucent": importlib.metadata.version("torch-lucent"),
                        "torch_threads": torch.get_num_threads()},
        "command": " ".join(["python -m benchmarks.feature_vis_lucent", *argv]),
    }
    print(json.dumps({k: v for k, v in record.items() if not isinstance(v, (dict, list))}), flush=True)
    if not args.dry_run:
        out = Path(__file__).resolve().parent / "results" / f"feature_vis_lucent_{jax.default_backend()}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        shown = min(16, len(channels))
        figure = jaxviz.plots.plot_visualizations(
            np.stack([vis.images[:shown, 0], lucent[:shown]], axis=1), channels[:shown],
            notes=[f"x{a:.1f} | x{b:.1f}" for a, b in zip(ours, theirs)], columns=4,
            title=f"conv6, {steps} steps: jaxviz (left) and Lucent (right), under each its exemplar ratio")
        jaxviz.plots.save_figure(figure, ROOT / "docs" / "images" / "lucent_vs_jaxviz.png")
    return record


if __name__ == "__main__":
    main()
