"""Concepts: CKA between every pair of layers against a numpy loop, and TCAV against Captum's, same run.

    python -m benchmarks.concepts --data-dir DIR               # DIR: the 10,000 CIFAR-10 test images, DIR/<class>/*
    /tmp/peer/bin/python -m benchmarks.concepts --data-dir DIR # the same with torch + captum importable (row tcav)
    python -m benchmarks.concepts --gpu --data-dir DIR          # the same sizes, refused unless JAX sees an accelerator
    python -m benchmarks.concepts --rows cka,cka_cross          # some rows (the others are kept from the results file)
    python -m benchmarks.concepts --dry-run                     # tiny sizes, nothing written (Captum skipped if absent)

Without ``--data-dir`` the embedded sample (1,000 CIFAR-10 test images) is used. The peer lives in its own
environment: ``python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 captum -e .`` (pinned: a
plain ``torch`` pulls a multi-GB CUDA build).

Claim: jaxviz's CKA of all 78 layer pairs (12 layers) of the pretrained CNN over the 10,000 CIFAR-10 test images,
in one pass (minibatches of 256, unbiased HSIC, Nguyen et al. 2021), is faster than the per-pair numpy loop on
the same minibatches, and agrees with it to 1e-3; jaxviz's TCAV (5 concepts x 3 layers x 50 runs, logistic CAVs
fitted on the device) is faster than Captum's TCAV on the torch port of the CNN, in the same run.

Rows:

- ``cka``: ``jaxviz.cka(net, images, batch_size=256, seed=0)``; its first call (compile included) and its second
  are timed apart. The baseline: for each minibatch of ``analysis.cka.minibatches(N, 256, seed=0)`` (the same
  ones), each layer's features (``jaxviz.layer_features``, float64, flattened), K = X Xᵀ with a zeroed diagonal,
  and for every pair l <= m the unbiased HSIC of Song et al. (2012),
  [tr(KL) + 1ᵀK1 1ᵀL1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀKL1] / (n(n-3)), summed; CKA = S_lm / sqrt(S_ll S_mm). Its
  ``layer_features`` programs are compiled before it is timed (one untimed minibatch); its time is split into
  the forward passes and the numpy HSIC.
- ``cka_cross``: the CNN's 12 layers against the example ResNet's (``examples/resnet_linen.py``; 64x64 input,
  the 32x32 images resized in the program) stem, stage1..3, pool and head. No baseline.
- ``tcav``: the 5 built-in procedural concepts (``TCAV_CONCEPTS``, 50 images each) x conv4, conv6, fc1 x 50
  runs, for cat, automobile and frog, scored on the first 100 images of each class; random sets of 50 drawn
  from all N images (``random_images=``). jaxviz with ``cav="logistic"`` and ``cav="mean_difference"``, first
  and second call each. Captum 0.9's ``captum.concept.TCAV`` on ``tests/torch_port.py``'s port (its conv4,
  conv6 and fc1 ReLU outputs checked against jaxviz's layers first), with the same concept images and 51
  random sets of 50 from the same pool (drawn with numpy seed 0: not jaxviz's draws): ``[concept, random_i]``
  for i = 1..50, and ``[random_0, random_i]`` for the null, as Captum's tutorial; ``interpret`` once per class;
  the total is timed (CAVs and activations are cached on disk by Captum, in a temporary folder, between the
  classes). Settings that differ, by design of each tool: Captum's default classifier (scikit-learn's
  ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``, hinge loss, fitted on a random 67% of the 100
  activations) against jaxviz's L2-logistic regression (C = 1, L-BFGS, on all of them); both take plain
  gradients (``LayerGradientXActivation(multiply_by_inputs=False)`` for Captum).

Writes benchmarks/results/concepts_<backend>.json (not with --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import jaxviz
from benchmarks._env import environment, git_commit
from jaxviz.analysis.cka import minibatches
from jaxviz.analysis.tcav import TCAV_CONCEPTS, significance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS = ("cka", "cka_cross", "tcav")
CLAIM = ("jaxviz's CKA of all 78 layer pairs over 10,000 CIFAR-10 test images in one pass is faster than the per-pair "
         "numpy loop on the same minibatches, and agrees with it to 1e-3; jaxviz's TCAV (5 concepts x 3 layers x 50 "
         "runs, logistic CAVs on the device) is faster than Captum's TCAV on the torch port in the same run")
TARGETS = ("cat", "automobile", "frog")
TCAV_LAYERS = ("conv4", "conv6", "fc1")
# The ReLU outputs in torch_cnn's Sequential: (conv, bn, relu) x 2 + pool a block, then flatten, fc1, ReLU, logits.
TORCH_LAYERS = {"conv4": "12", "conv6": "19", "fc1": "23"}
OTHER_LAYERS = ("stem", "stage1", "stage2", "stage3", "pool", "head")
AGREEMENT = 1e-3
INSTALL = ("row tcav needs torch and captum beside jaxviz, in their own environment: python -m venv /tmp/peer && "
           "/tmp/peer/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu && /tmp/peer/bin/pip "
           "install captum -e . ; then run /tmp/peer/bin/python -m benchmarks.concepts (or leave tcav out of --rows)")


def timed(f):
    """``(f(), seconds)``; every jaxviz result compared here is numpy already (the device has finished)."""
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, NaN where exactly one of them is NaN (a constant layer is NaN in both)."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("nan")
    both = ~np.isnan(a)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def numpy_cka(network, images: np.ndarray, layers, batch_size: int,
              seed: int) -> tuple[np.ndarray, float, float, float]:
    """The baseline: (CKA (L, L), seconds in all, of the forward passes, of the numpy HSIC loop), its forward
    programs compiled before the clock starts."""
    parts = minibatches(len(images), batch_size, seed=seed)
    for layer in layers:
        jaxviz.layer_features(network, images[parts[0]], layer=layer)
    begin = time.perf_counter()
    sums = np.zeros((len(layers), len(layers)))
    forward = hsic = 0.0
    for idx in parts:
        n = len(idx)
        start = time.perf_counter()
        features = [np.asarray(jaxviz.layer_features(network, images[idx], layer=layer)).reshape(n, -1)
                    .astype(np.float64) for layer in layers]
        forward += time.perf_counter() - start
        start = time.perf_counter()
        grams = []
        for x in features:
            k = x @ x.T
            np.fill_diagonal(k, 0.0)
            grams.append(k)
        for i in range(len(layers)):
            for j in range(i, len(layers)):
                k, m = grams[i], grams[j]
                value = (np.sum(k * m) + k.sum() * m.sum() / ((n - 1) * (n - 2))
                         - 2 / (n - 2) * (k.sum(0) @ m.sum(1))) / (n * (n - 3))
                sums[i, j] += value
                if i != j:
                    sums[j, i] += value
        hsic += time.perf_counter() - start
    scale = np.sqrt(np.diag(sums))
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = sums / np.outer(scale, scale)
    return matrix, time.perf_counter() - begin, forward, hsic


def row_cka(network, images: np.ndarray, layers, batch_size: int) -> dict:
    first, first_seconds = timed(lambda: jaxviz.cka(network, images, layers, batch_size=batch_size, seed=0))
    result, seconds = timed(lambda: jaxviz.cka(network, images, layers, batch_size=batch_size, seed=0))
    baseline, baseline_seconds, forward, hsic = numpy_cka(network, images, layers, batch_size, 0)
    difference = max_difference(result.matrix, baseline)
    row = {"git_commit": git_commit(), "layers": list(result.layers), "pairs": len(layers) * (len(layers) + 1) // 2,
           "images": result.images, "batch_size": result.batch_size, "batches": result.batches,
           "jaxviz_first_call_seconds": first_seconds, "jaxviz_seconds": seconds,
           "numpy_seconds": baseline_seconds, "numpy_forward_seconds": forward, "numpy_hsic_seconds": hsic,
           "speedup": baseline_seconds / seconds, "max_abs_difference": difference,
           "repeat_max_abs_difference": max_difference(first.matrix, result.matrix),
           "matrix": np.round(result.matrix, 4).tolist()}
    print(f"cka: {row['pairs']} pairs over {row['images']} images, jaxviz {seconds:.2f} s (first call "
          f"{first_seconds:.2f} s), numpy {baseline_seconds:.2f} s (forward {forward:.2f} s): x{row['speedup']:.1f}; "
          f"max |difference| {difference:.1e}", flush=True)
    if not difference < AGREEMENT:
        raise SystemExit(f"cka: jaxviz and the numpy baseline differ by {difference:.1e} >= {AGREEMENT:g}")
    return row


def row_cka_cross(network, images: np.ndarray, layers, other_layers) -> dict:
    sys.path.insert(0, str(ROOT))
    from examples.resnet_linen import CLASS_NAMES, INPUT_SHAPE, build

    module, variables = build()
    other = jaxviz.from_linen(module, variables, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES)
    call = lambda: jaxviz.cka(network, images, layers, other=other, other_layers=list(other_layers))
    _, first_seconds = timed(call)
    result, seconds = timed(call)
    row = {"git_commit": git_commit(), "layers": list(result.layers), "other_layers": list(result.other_layers),
           "other": "examples/resnet_linen.py (64x64 input: the images resized in the program)",
           "images": result.images, "batch_size": result.batch_size, "batches": result.batches,
           "jaxviz_first_call_seconds": first_seconds, "jaxviz_seconds": seconds,
           "matrix": np.round(result.matrix, 4).tolist()}
    print(f"cka_cross: {len(layers)} x {len(other_layers)} layers over {result.images} images, jaxviz {seconds:.2f} s "
          f"(first call {first_seconds:.2f} s)", flush=True)
    return row


def port(weights, images: np.ndarray):
    """The CNN in PyTorch up to its logits, checked against jaxviz: the logits to 1e-5 and the ReLU outputs Captum
    reads (forward hooks on ``TORCH_LAYERS``) to 1e-4, relative to each one's largest magnitude."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_port import torch_cnn

    network = weights.network
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # torch_port's read-only weights
        model = torch_cnn(weights.model, weights.variables, layer="logits")
    modules = dict(model.named_children())
    seen = {}
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, layer=layer: seen.__setitem__(layer, out))
             for layer, name in TORCH_LAYERS.items()]
    with torch.no_grad():
        logits = model(to_torch(network, images))
    for hook in hooks:
        hook.remove()
    errors = {}
    for layer, got in [("logits", logits), *seen.items()]:
        want = np.asarray(jaxviz.layer_features(network, images, layer=layer))
        if want.ndim == 4:
            want = want.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        errors[layer] = float(np.abs(got.numpy() - want).max() / np.abs(want).max())
        if errors[layer] > (1e-5 if layer == "logits" else 1e-4):
            raise SystemExit(f"the torch port differs from jaxviz at {layer} (module {TORCH_LAYERS.get(layer)}): "
                             f"relative error {errors[layer]:.1e}")
    return model, errors


def to_torch(network, images: np.ndarray):
    """uint8 NHWC -> the network's input, float32 NCHW torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(network.to_input(images)).transpose(0, 3, 1, 2)))


def captum_tcav(weights, concepts: dict[str, np.ndarray], pool: np.ndarray, scored: dict[str, np.ndarray],
                runs: int, set_size: int) -> dict:
    """Captum's TCAV: sign-count scores (C, T, L, runs) and null scores (T, L, runs), and seconds per class."""
    import torch
    from captum.attr import LayerGradientXActivation
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    network = weights.network
    model, errors = port(weights, pool[:16])
    rng = np.random.default_rng(0)
    draws = [rng.choice(len(pool), set_size, replace=False) for _ in range(runs + 1)]
    concept = lambda i, name, x: Concept(i, name, DataLoader(to_torch(network, x), batch_size=len(x)))
    ours = [concept(i, name, x) for i, (name, x) in enumerate(concepts.items())]
    randoms = [concept(len(ours) + i, f"random_{i}", pool[d]) for i, d in enumerate(draws)]
    sets = [[c, randoms[r]] for c in ours for r in range(1, runs + 1)]
    sets += [[randoms[0], randoms[r]] for r in range(1, runs + 1)]
    layers = [TORCH_LAYERS[layer] for layer in TCAV_LAYERS]
    shape = (len(ours), len(scored), len(layers), runs)
    run_scores, random_scores, seconds = np.zeros(shape), np.zeros(shape[1:]), []
    random.seed(0)  # Captum's train/test split (random.shuffle) and scikit-learn's SGD (numpy's global state)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as save_path, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "default classifier keeps data in memory", scikit-learn's
        tcav = TCAV(model, layers, model_id="jaxviz_cnn", save_path=save_path,
                    layer_attr_method=LayerGradientXActivation(model, None, multiply_by_inputs=False))
        for t, (name, x) in enumerate(scored.items()):
            inputs = to_torch(network, x)
            target = network.class_names.index(name)
            result, s = timed(lambda inputs=inputs, target=target: tcav.interpret(inputs, sets, target=target))
            seconds.append(s)
            for k, layer in enumerate(layers):
                shares = [float(result["-".join(str(c.id) for c in pair)][layer]["sign_count"][0]) for pair in sets]
                run_scores[:, t, k] = np.reshape(shares[:len(ours) * runs], (len(ours), runs))
                random_scores[t, k] = shares[len(ours) * runs:]
    return {"run_scores": run_scores, "random_scores": random_scores, "seconds": seconds, "port_errors": errors,
            "torch_threads": torch.get_num_threads()}


def row_tcav(weights, data: jaxviz.Dataset, per_class: int, runs: int, concept_images: int, use_captum: bool) -> dict:
    network = weights.network
    idx = np.concatenate([np.flatnonzero(data.labels == data.class_names.index(t))[:per_class] for t in TARGETS])
    subset = jaxviz.Dataset(data.images[idx], data.labels[idx], data.class_names)
    row = {"git_commit": git_commit(), "concepts": list(TCAV_CONCEPTS), "targets": list(TARGETS),
           "layers": list(TCAV_LAYERS), "runs": runs, "concept_images": concept_images,
           "images_per_target": per_class, "random_pool": len(data)}
    results = {}
    for cav in ("logistic", "mean_difference"):
        call = lambda cav=cav: jaxviz.tcav(network, None, list(TARGETS), list(TCAV_LAYERS), images=subset,
                                           random_images=data.images, runs=runs, cav=cav,
                                           concept_images=concept_images, seed=0)
        _, row[f"jaxviz_{cav}_first_call_seconds"] = timed(call)
        results[cav], row[f"jaxviz_{cav}_seconds"] = timed(call)
        row[f"jaxviz_{cav}"] = {**results[cav].to_json(),
                                "mean_run_scores": np.round(results[cav].run_scores.mean(-1), 4).tolist()}
    seconds = row["jaxviz_logistic_seconds"]
    line = (f"tcav: {len(TCAV_CONCEPTS)} concepts x {len(TCAV_LAYERS)} layers x {runs} runs, {len(TARGETS)} classes "
            f"x {per_class} images, jaxviz logistic {seconds:.2f} s (first call "
            f"{row['jaxviz_logistic_first_call_seconds']:.2f} s), mean_difference "
            f"{row['jaxviz_mean_difference_seconds']:.2f} s")
    if use_captum:
        import captum

        concepts = jaxviz.procedural_concepts(*network.input_spec.shape, count=concept_images, names=TCAV_CONCEPTS,
                                              seed=0)  # the images jaxviz.tcav(network, None, ...) makes
        scored = {t: subset.images[subset.labels == data.class_names.index(t)] for t in TARGETS}
        peer = captum_tcav(weights, concepts, data.images, scored, runs, concept_images)
        total = float(sum(peer["seconds"]))
        p_values = significance(peer["run_scores"], peer["random_scores"][None])
        theirs, ours = peer["run_scores"].mean(-1), results["logistic"].run_scores.mean(-1)
        row.update({
            "captum_version": captum.__version__, "captum_seconds": total, "captum_seconds_per_target": peer["seconds"],
            "speedup": total / seconds, "speedup_with_compile": total / row["jaxviz_logistic_first_call_seconds"],
            "port_relative_errors": peer["port_errors"], "torch_threads": peer["torch_threads"],
            "captum_mean_run_scores": np.round(theirs, 4).tolist(),
            "captum_significant": (p_values < 0.05 / p_values.size).tolist(),
            "sign_agreement": float(np.mean(np.sign(theirs - 0.5) == np.sign(ours - 0.5))),
            "settings_that_differ": {
                "classifier": "Captum: its DefaultClassifier, scikit-learn SGDClassifier(alpha=0.01, max_iter=1000, "
                              "tol=1e-3) (hinge loss), fitted on a random 67% of the concept and random activations "
                              "(its train/test split); jaxviz: L2-regularised logistic regression (C = 1) by L-BFGS "
                              "on all of them, on the device",
                "gradients": "both plain gradients of the target logit at the layer: Captum "
                             "LayerGradientXActivation(model, None, multiply_by_inputs=False) (its default), jaxviz "
                             "the gradient of the layer perturbation",
                "random_sets": f"Captum: {runs + 1} random sets of {concept_images} drawn from the same pool with "
                               f"numpy seed 0, concept vs random_i (i = 1..{runs}) and the null random_0 vs "
                               f"random_i (Captum's tutorial); jaxviz: its own draws (seed 0), concept vs B_r and "
                               f"the null A_r vs B_r, 2 x {runs} sets",
                "scored_images": f"the same {per_class} images per class for both",
                "caching": "Captum computes the concepts' activations and CAVs in the first class's interpret call "
                           "and reads them back from disk (a temporary folder) for the others; its time is the sum",
            },
        })
        line += f", Captum {total:.2f} s: x{row['speedup']:.1f}; sign agreement {row['sign_agreement']:.2f}"
    print(line, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10 test images as DIR/<class>/*; default the embedded sample")
    parser.add_argument("--gpu", action="store_true", help="the same sizes; refused unless JAX's backend is an "
                                                           "accelerator")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to measure, of {', '.join(ROWS)}; the others' "
                                                                "are kept from the results file")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, nothing written")
    args = parser.parse_args(argv)
    wanted = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(wanted) - set(ROWS)):
        parser.error(f"--rows: unknown {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    backend = jax.default_backend()
    if args.gpu and backend == "cpu" and not args.dry_run:
        parser.error("--gpu: JAX's backend is cpu (install jax[cuda12] or drop --gpu)")
    try:
        import captum.concept  # noqa: F401
        import torch
        use_captum = True
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        use_captum = False
    if "tcav" in wanted and not use_captum:
        if not args.dry_run:
            raise SystemExit(f"torch or captum is not importable by {sys.executable}: {INSTALL}")
        print("tcav: torch or captum is not importable here: the Captum part is skipped (dry run only)", flush=True)

    weights = jaxviz.load_pretrained()
    network = weights.network
    data = jaxviz.load_image_folder(args.data_dir) if args.data_dir else jaxviz.load_sample()
    data = data.with_classes(network.class_names)
    if args.dry_run:  # 8 images of each class, 3 layers, 2 minibatches, 2 runs of 8-image sets
        idx = np.concatenate([np.flatnonzero(data.labels == c)[:8] for c in range(len(data.class_names))])
        data = jaxviz.Dataset(data.images[idx], data.labels[idx], data.class_names)
        layers, other_layers, batch_size = ("conv1", "pool2", "fc1"), ("stem", "pool"), 40
        per_class, runs, concept_images = 8, 2, 8
    else:
        layers, other_layers, batch_size = network.layer_names, OTHER_LAYERS, 256
        per_class, runs, concept_images = 100, 50, 50
    images = np.asarray(data.images)

    name = f"concepts_{backend}.json"
    earlier = HERE / "results" / name
    rows = json.loads(earlier.read_text())["rows"] if earlier.exists() and not args.dry_run else {}
    if "cka" in wanted:
        rows["cka"] = row_cka(network, images, layers, batch_size)
    if "cka_cross" in wanted:
        rows["cka_cross"] = row_cka_cross(network, images, layers, other_layers)
    if "tcav" in wanted:
        rows["tcav"] = row_tcav(weights, data, per_class, runs, concept_images, use_captum)
    record = {"claim": CLAIM, "environment": environment(), "n_images": len(data),
              "data": args.data_dir or "the embedded sample (jaxviz.load_sample())", "preset": "gpu" if args.gpu else
              "default", "rows": rows, "command": " ".join(["python -m benchmarks.concepts", *argv])}
    if not args.dry_run:
        earlier.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
