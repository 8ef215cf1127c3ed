"""``jaxviz cka`` (which layers represent the same thing) and ``jaxviz tcav`` (which concepts matter for a class)."""

from __future__ import annotations

import argparse
import json

import jaxviz
from jaxviz.analysis.cka import CKA_BATCH_SIZE
from jaxviz.analysis.tcav import CAV_METHODS, TCAV_CONCEPTS, TCAV_RUNS
from jaxviz.cli._options import (
    add_data,
    add_model,
    as_option,
    check_writable,
    int_at_least,
    keyword_defaults,
    load,
    name_list,
)
from jaxviz.data.concepts import CONCEPTS
from jaxviz.report import plots

__all__ = ["add_cka", "add_tcav", "cmd_cka", "cmd_tcav"]


def _add_output(p, figure: str) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--out", help=f"write the {figure} to this PNG")


def _emit(args, result, draw) -> None:
    """Save ``draw(result)`` to ``--out``, then print the result: JSON (``--json``) or its table."""
    if args.out:
        plots.save_figure(draw(result), args.out)
    print(json.dumps({**result.to_json(), "png": args.out}) if args.json else result.table(), flush=True)


def add_cka(sub) -> None:
    p = sub.add_parser("cka", help="linear CKA between every pair of layers (or with another model), streamed over "
                                   "the data")
    add_model(p)
    add_data(p)
    d = keyword_defaults(jaxviz.cka)
    g = p.add_argument_group("cka")
    g.add_argument("--layers", type=name_list, help="comma-separated layers (default: all)")
    g.add_argument("--other", metavar="FILE_OR_MODULE:ATTR",
                   help="a second model (as --model) whose layers are the columns; of another input size, it sees "
                        "the images resized")
    g.add_argument("--other-layers", type=name_list, help="its comma-separated layers (default: all)")
    g.add_argument("--batch-size", type=int_at_least(4, "an int >= 4"), default=CKA_BATCH_SIZE,
                   help=f"images per minibatch, at most (default: {CKA_BATCH_SIZE})")
    g.add_argument("--method", choices=("minibatch", "full"), default=d["method"],
                   help="minibatch: streamed (Nguyen et al.); full: one N x N Gram matrix per layer (small data)")
    g.add_argument("--hsic", choices=("unbiased", "biased"), default=d["hsic"],
                   help="the HSIC estimator (biased: --method full only)")
    g.add_argument("--seed", type=int, default=d["seed"], help="the order of the minibatches")
    g.add_argument("--checkpoint", help="a folder of completion records: a killed run resumes from it")
    _add_output(p, "heatmap")
    p.set_defaults(func=cmd_cka)


def cmd_cka(args) -> None:
    if args.out:
        check_writable(args.out, directory=False, option="--out")
    data, network = load(args)
    other = jaxviz.load_model(args.other) if args.other else None
    try:
        result = jaxviz.cka(network, data.images, args.layers or None, other=other,
                            other_layers=args.other_layers or None, batch_size=args.batch_size, method=args.method,
                            hsic=args.hsic, seed=args.seed, checkpoint=args.checkpoint, progress=True)
    except (ValueError, TypeError) as e:
        raise as_option(e, ("layers", "other", "other_layers", "batch_size", "method", "hsic", "seed", "checkpoint"),
                        {"images": f"--data {args.data}"}) from None
    _emit(args, result, lambda r: plots.plot_cka(r.matrix, r.layers, r.other_layers))


def _concept(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (a folder of the concept's images), got {text!r}")
    return name, folder


def add_tcav(sub) -> None:
    p = sub.add_parser("tcav", help="TCAV: whether concepts (stripes, colours, textures or your folders) raise the "
                                    "logits of classes, with a significance test")
    add_model(p)
    add_data(p)
    d = keyword_defaults(jaxviz.tcav)
    g = p.add_argument_group("tcav")
    g.add_argument("--concept", type=_concept, action="append", metavar="NAME=DIR",
                   help="a concept as a folder of images (repeat for several; default: the built-in "
                        f"{', '.join(TCAV_CONCEPTS)})")
    g.add_argument("--builtin", type=name_list, help=f"built-in concepts to use (any of {', '.join(CONCEPTS)})")
    g.add_argument("--targets", type=name_list, required=True, help="comma-separated classes, e.g. cat,automobile")
    g.add_argument("--layers", type=name_list, help="comma-separated layers (default: the layer before the output)")
    g.add_argument("--runs", type=int_at_least(2, "an int >= 2"), default=TCAV_RUNS,
                   help=f"CAVs per concept, each against its own random set, and random-vs-random CAVs "
                        f"(default: {TCAV_RUNS})")
    g.add_argument("--cav", choices=CAV_METHODS, default=d["cav"],
                   help="logistic: L2 logistic regression (L-BFGS, on the device); mean_difference: FastCAV")
    g.add_argument("--alpha", type=float, default=d["alpha"], help="significance level, Bonferroni-corrected")
    g.add_argument("--concept-images", type=int_at_least(4, "an int >= 4"), default=d["concept_images"],
                   help=f"images per built-in concept (default: {d['concept_images']})")
    g.add_argument("--seed", type=int, default=d["seed"])
    _add_output(p, "scores' figure")
    p.set_defaults(func=cmd_tcav)


def cmd_tcav(args) -> None:
    if args.out:
        check_writable(args.out, directory=False, option="--out")
    if args.concept and args.builtin:
        raise ValueError("--builtin: expected either --concept folders or --builtin concepts, got both")
    if args.builtin and (unknown := [n for n in args.builtin if n not in CONCEPTS]):
        raise ValueError(f"--builtin: expected concepts from {', '.join(CONCEPTS)}, got {', '.join(unknown)}")
    if args.concept and len({n for n, _ in args.concept}) != len(args.concept):
        raise ValueError(f"--concept: expected distinct names, got {[n for n, _ in args.concept]}")
    data, network = load(args)
    if args.builtin:
        h, w, c = network.input_spec.shape
        concepts = jaxviz.procedural_concepts(h, w, c, count=args.concept_images, names=args.builtin, seed=args.seed)
    else:
        concepts = dict(args.concept) if args.concept else None
    try:
        result = jaxviz.tcav(network, concepts, list(args.targets), list(args.layers or [network.feature_layer]),
                             images=data, runs=args.runs, cav=args.cav, alpha=args.alpha,
                             concept_images=args.concept_images, seed=args.seed, progress=True)
    except (ValueError, TypeError, OSError) as e:
        raise as_option(e, ("targets", "layers", "runs", "cav", "alpha", "concept_images", "seed"),
                        {"images": f"--data {args.data}", "random_images": f"--data {args.data}",
                         "concepts": "--concept"}) from None
    _emit(args, result, plots.plot_tcav)
