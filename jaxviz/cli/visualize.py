"""``jaxviz visualize``: what each unit of a layer looks for, with the honesty numbers beside each picture."""

from __future__ import annotations

import argparse
import json

import numpy as np

import jaxviz
from jaxviz import plots
from jaxviz.analysis.looks_for import visualize_with_exemplars
from jaxviz.cli._options import add_data, add_model, as_option, check_writable, int_list, load, positive_int
from jaxviz.visualization.objectives import OBJECTIVES
from jaxviz.visualization.parameterizations import PARAMETERIZATIONS
from jaxviz.visualization.transforms import TRANSFORM_NAMES
from jaxviz.visualization.visualize import check_visualization, visualize_defaults

__all__ = ["add_visualize", "cmd_visualize", "unit_selection"]

# the API's arguments that are the command's options of the same name (underscores as dashes)
_OPTIONS = ("layer", "units", "objective", "steps", "lr", "param", "transforms", "batch", "diversity", "size",
            "seed")


def unit_selection(text: str) -> tuple[int, ...] | slice:
    """argparse type: ``0:16`` (a range, either end may be left out) or comma-separated unit numbers."""
    if ":" in text:
        start, _, stop = text.partition(":")
        try:
            return slice(int(start) if start.strip() else 0, int(stop) if stop.strip() else None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected START:STOP or comma-separated ints, got {text!r}") from None
    try:
        return int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected START:STOP or comma-separated ints, got {text!r}") from None


def image_size(text: str) -> tuple[int, int]:
    """argparse type: ``HxW`` (e.g. ``64x64``) or one int for a square."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with positive ints (e.g. 64x64), got {text!r}")
    return (values[0], values[-1])


def add_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="feature visualization: the image each unit of a layer looks for, next to "
                                         "its exemplar ratio and predicted class (PNG grid, .npz, JSON)")
    add_model(p)
    add_data(p)
    g = p.add_argument_group("visualization")
    g.add_argument("--layer", help="a layer with (h, w, channels) maps or dense units (default: the layer before "
                                   "the output)")
    g.add_argument("--units", type=unit_selection, help="units to draw: START:STOP or a comma-separated list "
                                                        "(default: every unit of --layer)")
    d = visualize_defaults()  # the API's defaults, shown in the help
    g.add_argument("--objective", choices=OBJECTIVES, default=d["objective"],
                   help="channel: the unit's map averaged over space; neuron: its centre position")
    g.add_argument("--negative", action="store_true", help="minimize: what suppresses each unit")
    g.add_argument("--steps", type=positive_int, default=d["steps"], help=f"optimizer steps (default: {d['steps']})")
    g.add_argument("--lr", type=float, default=d["lr"], help=f"Adam's learning rate (default: {d['lr']})")
    g.add_argument("--param", choices=PARAMETERIZATIONS, default=d["param"],
                   help=f"image parameterization (default: {d['param']})")
    g.add_argument("--no-decorrelate", action="store_true", help="no colour decorrelation")
    g.add_argument("--transforms", default=d["transforms"],
                   help=f"standard, none, or comma-separated names from {','.join(TRANSFORM_NAMES)} "
                        f"(default: {d['transforms']})")
    g.add_argument("--batch", type=positive_int, default=d["batch"], help=f"images per unit (default: {d['batch']})")
    g.add_argument("--diversity", type=float, default=d["diversity"],
                   help="weight of the diversity term (needs --batch >= 2)")
    g.add_argument("--size", type=image_size, help="HxW: draw at another size the layer takes, e.g. 64x64 for a "
                                                   "conv layer (default: the model's input size)")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--k", type=positive_int, default=10,
                   help="top-K images of the data per unit: the exemplar ratio and the majority class")
    p.add_argument("--out", default="visualize", help="output directory")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> None:
    out = check_writable(args.out, directory=True, option="--out")
    data, network = load(args)
    layer = args.layer or network.feature_layer
    transforms = args.transforms if args.transforms in ("standard", "none") else tuple(
        t.strip() for t in args.transforms.split(",") if t.strip())
    try:
        network.check_layer(layer)
        units = args.units
        width = network.num_units(layer)
        if isinstance(units, slice):
            units = tuple(range(width))[units]
            if not units:
                raise ValueError(f"--units: expected a range of units in [0, {width}), got "
                                 f"{args.units.start}:{'' if args.units.stop is None else args.units.stop}")
        check_visualization(network, layer, units, objective=args.objective, steps=args.steps, lr=args.lr,
                            param=args.param, transforms=transforms, batch=args.batch, diversity=args.diversity,
                            size=args.size, seed=args.seed)
        if args.k > len(data):
            raise ValueError(f"--k: expected at most the {len(data)} images of the data, got {args.k}")
    except (ValueError, TypeError) as e:
        raise as_option(e, _OPTIONS) from None
    scores = jaxviz.unit_scores(jaxviz.layer_features(network, data.images, layer=layer, progress="features"))
    top = jaxviz.top_k_images(scores, args.k)
    try:
        looks = visualize_with_exemplars(network, layer, top, data.labels, len(data.class_names), units,
                                         objective=args.objective, negative=args.negative, steps=args.steps,
                                         lr=args.lr, param=args.param, decorrelate=not args.no_decorrelate,
                                         transforms=transforms, batch=args.batch, diversity=args.diversity,
                                         size=args.size, seed=args.seed, progress=True)
    except (ValueError, TypeError) as e:  # every chosen unit dead on the data
        raise as_option(e, _OPTIONS) from None
    result, ratio, units, dead = looks.visualization, looks.exemplar_ratio, list(looks.units), list(looks.dead)
    record = {"layer": layer, "units": units, "settings": result.settings, "data": data.source,
              "activation": result.activation.tolist(), "exemplar_ratio": [float(r) for r in ratio],
              "dead_units": dead}
    if looks.predicted_class is not None:
        record["predicted_class"] = [[network.class_names[c] for c in row] for row in looks.predicted_class]
        record["majority_class"] = [data.class_names[c] for c in looks.majority_class]
    notes = looks.notes(network.class_names if network.is_classifier else None)
    out.mkdir(parents=True, exist_ok=True)
    jaxviz.atomic_write_bytes(out / "visualizations.json", json.dumps(record, indent=2).encode())
    with jaxviz.atomic_path(out / "visualizations.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, images=result.images, activation=result.activation, trace=result.trace,
                 units=np.asarray(units), exemplar_ratio=ratio)
    title = f"What {layer} units look for ({args.steps} steps; x: activation over the best of {len(data)} images)"
    plots.save_figure(plots.plot_visualizations(result.images, units, notes=notes, title=title),
                      out / "visualizations.png")
    print(json.dumps({"out": str(out), "units": len(units), "dead": len(dead),
                      "above_best_image": int((ratio > 1).sum())}))
