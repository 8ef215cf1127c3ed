"""``jaxviz attribute``, ``jaxviz faithfulness`` and ``jaxviz sanity``: attribution maps and which to trust.

    jaxviz attribute --method occlusion|rise|ablation|saliency|ixg|ig|smoothgrad|gradcam --out DIR
        maps of each image's target (.npz + PNG); a classifier's softmax probability
        of the predicted class by default
    jaxviz faithfulness [--methods occlusion,rise,...] [--json] [--out DIR]
        the methods' maps of each image scored by deletion / insertion AUC and MuFidelity
    jaxviz sanity [--methods saliency,ig,gradcam] [--mode cascading|independent] [--json] [--out DIR]
        the model-randomization sanity check of the gradient methods

Every option is checked, against the data and the model too, before any map is computed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import jax
import numpy as np

import jaxviz
from jaxviz import plots
from jaxviz.checks import renamed_arguments
from jaxviz.cli._options import (
    add_data,
    add_model,
    as_option,
    check_writable,
    flag,
    int_list,
    load,
    model_outputs,
    positive_int,
)
from jaxviz.cli.commands import _indices, resolve_fill
from jaxviz.cli.runs import add_run_options, check_run_options, run_all
from jaxviz.evaluation.comparison import attribute, check_methods
from jaxviz.evaluation.sanity import (
    DEFAULT_METHODS,
    MODES,
    PASS_THRESHOLD,
    SANITY_OPTIONS,
    check_sanity_methods,
    format_correlation,
)
from jaxviz.methods import registry
from jaxviz.methods.base import explain, options_fields

__all__ = ["add_attribute", "add_faithfulness", "add_sanity", "cmd_attribute", "cmd_faithfulness",
           "cmd_sanity"]

METRICS = (("deletion_auc", "deletion AUC", "lower"), ("insertion_auc", "insertion AUC", "higher"),
           ("mu_fidelity", "MuFidelity", "higher"))
DEFAULT_IMAGES = 4
DEFAULT_SANITY_IMAGES = 16
# the API's argument -> the option that sets it, for errors that reach the user (``as_option``); a command
# uses the entries whose option it has
# (the methods' options are named after their fields: ``--num-masks`` sets ``num_masks``)
API_OPTIONS = {
    "steps": "--steps", "layer": "--layer", "units": "--units", "attribution": "--methods", "methods": "--methods",
    "network": "--model", "grid": "--mu-grid", "mu_grid": "--mu-grid", "num_subsets": "--num-subsets",
    "targets": "--targets", "baselines": "--fill",
    **{name: flag(name) for m in registry.METHODS.values() for name in options_fields(m.options)},
}


# --------------------------------------------------------------------------- argparse types


def _number(ok, want: str):
    """argparse type: a float for which ``ok`` holds (NaN never does)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


_probability = _number(lambda v: 0 < v <= 1, "a number in (0, 1]")
_stdev = _number(lambda v: 0 <= v < float("inf"), "a non-negative finite number")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**32), got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an int >= 2, got {value}")
    return value


def _methods_from(known) -> callable:
    def parse(text: str) -> tuple[str, ...]:
        names = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated methods from {', '.join(known)}, got {text!r}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r}; expected comma-separated methods from "
                                             f"{', '.join(known)}")
        return tuple(dict.fromkeys(names))  # in the order given, once each

    return parse


_method_list = _methods_from(registry.names())
# argparse types of the methods' options where a field's annotation does not say enough
_OPTION_TYPES = {"seed": _seed, "p": _probability, "stdevs": _stdev, "fill": str, "cam_layer": str,
                 "segments": positive_int}
FILL_CLI_HELP = ("a value, one per channel (r,g,b), 'mean' (of the explained images; of the whole dataset with "
                 "--all) or 'blur', in model-input space")


def add_method_options(g, methods, defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the methods' options dataclasses (``--num-masks`` for ``num_masks``), with its
    default (``defaults`` where given) and help text, prefixed by the methods that take it."""
    fields: dict = {}
    for m in methods:
        for name, field in options_fields(m.options).items():
            fields.setdefault(name, (field, []))[1].append(m.label)
    for name, (field, labels) in fields.items():
        if name in skip:
            continue
        default = (defaults or {}).get(name, field.default)
        default = "0" if name == "fill" and default == 0 else default  # parsed by resolve_fill
        hint = str(field.type)
        kind = _OPTION_TYPES.get(name) or (positive_int if hint == "int" else float if hint == "float" else str)
        text = FILL_CLI_HELP if name == "fill" else field.metadata["help"]
        g.add_argument(flag(name), dest=name, type=kind, default=default, choices=field.metadata["choices"],
                       help=f"{', '.join(labels)}: {text}" + ("" if default is None else f" (default: {default})"))


def method_options(args, methods) -> dict:
    """The methods' options as parsed (their fields' names), ``fill`` as given (``resolve_fill`` turns it
    into values)."""
    return {name: getattr(args, name) for m in methods for name in options_fields(m.options)}


# --------------------------------------------------------------------------- parsers


def _add_common(p: argparse.ArgumentParser):
    """The model, data, what is explained and the options every method shares; returns the methods group."""
    add_model(p)
    add_data(p)
    g = p.add_argument_group("what is explained")
    g.add_argument("--images", type=int_list,
                   help=f"dataset indices, e.g. 0,5,9 (default: {DEFAULT_IMAGES} images, one per class in turn)")
    g.add_argument("--targets", type=int_list,
                   help="the output explained for each image, one per image, e.g. 3,3,1 (default: each image's "
                        "predicted class for a classifier, else unit 0 of --layer)")
    g.add_argument("--layer", help="explain a unit of this layer (its activations averaged over space) instead of "
                                   "a classifier's softmax probability (default: the output layer; the layer before "
                                   "it for a model without class names)")
    return p.add_argument_group("methods")


def add_attribute(sub) -> None:
    p = sub.add_parser("attribute", help="attribution maps (" + ", ".join(registry.labels().values()) + "): .npz + PNG")
    p.add_argument("--method", required=True, choices=registry.names(), help="the attribution method")
    g = _add_common(p)
    add_method_options(g, registry.METHODS.values())
    g.add_argument("--slic", type=positive_int, metavar="N",
                   help="feature ablation: about N SLIC superpixels per image instead of the --segments grid "
                        "(needs scikit-image)")
    p.add_argument("--out", required=True, help="output directory (attribution.npz, attribution.png), or the run's "
                                                "store with --all")
    add_run_options(p)
    p.add_argument("--units", type=int_list, help="with --all: the units of --layer to keep (default: all)")
    p.set_defaults(func=cmd_attribute)


def add_sanity(sub) -> None:
    p = sub.add_parser("sanity", help="the model-randomization sanity check of the gradient methods (Adebayo et al. "
                                      "2018): do the maps change when the weights are randomized?")
    add_model(p)
    add_data(p)
    g = p.add_argument_group("the check")
    g.add_argument("--images", type=int_list, help=f"dataset indices, e.g. 0,5,9 (default: "
                                                   f"{DEFAULT_SANITY_IMAGES} images, one per class in turn)")
    sanity = registry.names(sanity=True)
    g.add_argument("--methods", type=_methods_from(sanity), default=DEFAULT_METHODS,
                   help=f"methods from {','.join(sanity)} (default: {','.join(DEFAULT_METHODS)})")
    g.add_argument("--mode", choices=MODES, default="cascading",
                   help="randomize from the top layer down (cascading) or one layer at a time (default: cascading)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the random weights and SmoothGrad's noise")
    add_method_options(g, [registry.METHODS[m] for m in sanity], SANITY_OPTIONS, skip=("seed",))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", help="also write sanity.json and sanity.png in this directory")
    p.set_defaults(func=cmd_sanity)


def add_faithfulness(sub) -> None:
    p = sub.add_parser("faithfulness", help="which map to trust? deletion / insertion AUC and MuFidelity of "
                                            "the perturbation and gradient methods' maps")
    g = _add_common(p)
    add_method_options(g, registry.METHODS.values())
    g = p.add_argument_group("metrics")
    g.add_argument("--methods", type=_method_list, default=registry.names(),
                   help=f"methods to report (default: {','.join(registry.names())})")
    g.add_argument("--steps", type=positive_int, default=50,
                   help="deletion / insertion steps, at most the pixels of an image (default: 50)")
    g.add_argument("--mu-grid", type=positive_int, default=8, help="MuFidelity: cells per side (default: 8)")
    g.add_argument("--num-subsets", type=_at_least_two, default=128,
                   help="MuFidelity: random subsets of cells (default: 128)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", help="also write faithfulness.json, faithfulness.npz (the maps) and faithfulness.png "
                                 "in this directory")
    p.set_defaults(func=cmd_faithfulness)


# --------------------------------------------------------------------------- shared checks


def _command_options(args) -> dict[str, str]:
    """The entries of ``API_OPTIONS`` whose option this command has."""
    return {k: v for k, v in API_OPTIONS.items() if hasattr(args, v[2:].replace("-", "_"))}


@contextlib.contextmanager
def _named_as_options(args):
    """Errors of the API calls inside name the command's option instead of the argument (``as_option``)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise as_option(e, (), _command_options(args)) from None


def _explained(args, network: jaxviz.Network) -> tuple[str, bool, int]:
    """The explained layer, whether it is a classifier's softmax, and its number of outputs."""
    with renamed_arguments({"layer": "--layer"}):
        explained = explain(network, args.layer)
    return explained.layer, explained.softmax, explained.outputs


def _default_images(data: jaxviz.Dataset, count: int) -> np.ndarray:
    """The default ``--images``: ``count`` indices, one image per class in turn (the first image of each
    class, then the second of each, ...), so that a dataset sorted by class is not explained by one class."""
    rank = np.zeros(len(data), np.int64)
    for c in np.unique(data.labels):
        where = np.flatnonzero(data.labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((data.labels, rank))[:count].astype(np.int64)


def _prepare(args):
    """Data, network and what to explain, all checked: (data, network, idx, layer, softmax, targets or None)."""
    data, network = load(args)
    idx = _indices(args.images, data, "--images") if args.images is not None else _default_images(data, DEFAULT_IMAGES)
    if len(idx) == 0:
        raise ValueError("--data: the dataset has no images")
    layer, softmax, outputs = _explained(args, network)
    targets = None
    if args.targets is not None:
        targets = np.asarray(args.targets, np.int64)
        if len(targets) != len(idx):
            raise ValueError(f"--targets: expected one output per image ({len(idx)} images: "
                             f"{idx.tolist()}), got {len(targets)} values {list(args.targets)}")
        if targets.min() < 0 or targets.max() >= outputs:
            what = "classes" if softmax else "units"
            raise ValueError(f"--targets: expected indices in [0, {outputs}) ({layer} has {outputs} {what}), "
                             f"got {list(args.targets)}")
    return data, network, idx, layer, softmax, targets


def _targets(network, images, idx, layer: str, softmax: bool, targets) -> tuple[np.ndarray, np.ndarray | None]:
    """``(targets, predicted)``: ``targets``, or by default each image's predicted class (softmax) or unit 0
    of ``layer``, and the predicted classes (None unless ``softmax``); the explained layer's outputs are
    checked to be finite either way."""
    outputs = model_outputs(network, images, idx, layer=layer)
    predicted = outputs.reshape(len(images), -1).argmax(-1).astype(np.int64) if softmax else None
    if targets is None:
        targets = predicted if softmax else np.zeros(len(images), np.int64)
    return targets, predicted


def _titles(network, data, idx, targets, predicted, layer: str) -> list[str]:
    """Each image's index, true class, predicted class (when explaining a classifier's output) and the
    explained output when it is not the predicted class."""
    titles = []
    for n, (i, t) in enumerate(zip(idx, targets)):
        true = data.class_names[data.labels[i]]
        if predicted is None:
            titles.append(plots.image_title(f"{i}: ", true=true, explained=f"{layer}[{t}]", sep="\n"))
        else:
            pred = network.class_names[predicted[n]]
            titles.append(plots.image_title(f"{i}: ", true=true, predicted=pred, explained=None if t == predicted[n]
                                            else f"map of {network.class_names[t]}", sep="\n"))
    return titles


def _write_npz(path: Path, arrays: dict) -> None:
    with jaxviz.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


# --------------------------------------------------------------------------- attribute


def _check_slic() -> None:
    try:
        import skimage.segmentation  # noqa: F401  (jaxviz.slic_segments imports it when it runs)
    except ImportError:
        raise ValueError("--slic: needs scikit-image (pip install scikit-image, or pip install jaxviz[slic]); "
                         "use --segments N for a grid of segments instead") from None


def _attribute_all(args) -> None:
    """``--all``: a perturbation method over every image into a resumable store (the layer's raw scores)."""
    if args.method not in registry.names(run=True):
        raise ValueError(f"--method: with --all, one of {', '.join(registry.names(run=True))} (the perturbation "
                         f"methods a dataset run can stream), got {args.method}")
    method = registry.METHODS[args.method]
    for option, value in (("--images", args.images), ("--targets", args.targets), ("--slic", args.slic)):
        if value is not None:
            raise ValueError(f"{option}: not with --all (every image and every kept unit is explained)")

    def choose(data, network):
        layer = args.layer or network.output_layer
        network.check_layer(layer, "--layer")
        options = {k: v for k, v in method_options(args, (method,)).items() if k != "fill"}
        return {"layer": layer, "units": args.units, "fill": resolve_fill(args.fill, data, network, mean_over="dataset"),
                **options}

    run_all(args, args.method, choose, _command_options(args))  # run_dataset's errors name the options


def cmd_attribute(args) -> None:
    """One method's maps of each image's target: attribution.npz and attribution.png; with --all, a
    perturbation method over every image of the dataset into a resumable store."""
    check_run_options(args)
    if args.all:
        return _attribute_all(args)
    if args.units is not None:
        raise ValueError("--units: only with --all (without it, --targets chooses the explained output)")
    out = check_writable(args.out, directory=True, option="--out")
    for name in ("attribution.npz", "attribution.png"):
        check_writable(out / name, directory=False, option="--out")
    if args.method == "ablation" and args.slic is not None:
        _check_slic()
    data, network, idx, layer, softmax, targets = _prepare(args)
    try:  # the figure must be drawable before any map is computed
        plots.check_grid(len(idx), 2, what_rows="images", what_cols="methods")
    except ValueError as e:
        raise as_option(e, ("images",)) from None
    method = registry.METHODS[args.method]
    options = method_options(args, (method,))
    with _named_as_options(args):  # the method's requirements, before any work
        check_methods(network, (args.method,), layer=layer, **options)
    images = data.images[idx]
    x = network.to_input(images)
    if "fill" in options:
        options["fill"] = resolve_fill(args.fill, images, network, mean_over="images")
    if args.slic is not None:
        options["segments"] = jaxviz.slic_segments(images, n_segments=args.slic)
    targets, predicted = _targets(network, images, idx, layer, softmax, targets)
    f = explain(network, layer).f
    start = time.perf_counter()
    with _named_as_options(args):
        attribution = attribute(network, x, args.method, layer=layer, targets=targets, options=options, progress=True)
    seconds = time.perf_counter() - start
    maps = np.asarray(attribution.maps, np.float32)
    settings = dict(attribution.settings)
    if "fill" in settings:
        settings["fill"] = args.fill
    if args.slic is not None:
        settings["slic"] = args.slic
        settings.pop("segments", None)
    base = np.asarray(jax.jit(f)(network.variables, x))[np.arange(len(idx)), targets]
    explained = "softmax probability" if softmax else "mean activation"
    record = {"method": args.method, "layer": layer, "explained": explained, "images": idx.tolist(),
              "targets": targets.tolist(), "settings": settings}
    fig = plots.plot_attribution_maps(images, {method.label: maps},
                                      titles=_titles(network, data, idx, targets, predicted, layer),
                                      title=f"{method.label}: {explained} of {layer}")
    out.mkdir(parents=True, exist_ok=True)
    # both files or neither: each is written under a temporary name, then both are renamed
    with jaxviz.atomic_path(out / "attribution.png") as png, jaxviz.atomic_path(out / "attribution.npz") as npz:
        plots.save_figure(fig, png)
        with open(npz, "wb") as fh:
            np.savez_compressed(fh, maps=maps, targets=targets, images=idx, base=base.astype(np.float32),
                                method=np.asarray(args.method), layer=np.asarray(layer),
                                settings=np.asarray(json.dumps(record)))
    print(json.dumps({"npz": str(out / "attribution.npz"), "png": str(out / "attribution.png"), **record,
                      "seconds": round(seconds, 3)}, allow_nan=False))


# --------------------------------------------------------------------------- faithfulness


def _table(record: dict) -> str:
    header = ["method", *(f"{label} ({better} better)" for _, label, better in METRICS)]
    rows = [[registry.METHODS[m].label, *(f"{record['methods'][m][key]:.4f}" for key, _, _ in METRICS)] for m in record["methods"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{len(record['images'])} images, {record['explained']} of {record['layer']}, "
             f"{record['settings']['steps']} steps (means over the images)",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if record["sentence"]:
        lines.append(record["sentence"])
    return "\n".join(lines)


def cmd_faithfulness(args) -> None:
    """The chosen methods' maps of the same targets, scored; a table or JSON."""
    out = check_writable(args.out, directory=True, option="--out") if args.out else None
    data, network, idx, layer, softmax, targets = _prepare(args)
    methods = registry.resolve(args.methods, argument="--methods")
    options = method_options(args, methods)
    with _named_as_options(args):  # every method's requirements, before any work
        check_methods(network, args.methods, layer=layer, steps=args.steps, mu_grid=args.mu_grid,
                      num_subsets=args.num_subsets, **options)
    images = data.images[idx]
    if "fill" in options:
        options["fill"] = resolve_fill(args.fill, images, network, mean_over="images")
    targets, predicted = _targets(network, images, idx, layer, softmax, targets)
    start = time.perf_counter()
    with _named_as_options(args):
        selected = jaxviz.compare_methods(
            network, images, targets=targets, layer=layer, methods=args.methods, steps=args.steps,
            mu_grid=args.mu_grid, num_subsets=args.num_subsets, progress=True, **options)
    seconds = time.perf_counter() - start
    chosen = {m.label: m.name for m in methods}  # label -> CLI name, in the order asked
    means = selected.means()
    record = {
        "layer": layer, "explained": "softmax probability" if softmax else "mean activation",
        "images": idx.tolist(), "targets": np.asarray(selected.targets).tolist(),
        "methods": {chosen[k]: {key: means[k][key] for key, _, _ in METRICS} for k in chosen},
        "per_image": {chosen[k]: {key: np.asarray(v, np.float64).tolist() for key, v in selected.scores[k].items()}
                      for k in chosen},
        "better": {key: better for key, _, better in METRICS},
        "ranking": [chosen[k] for k in selected.ranking()],
        "ranks": {chosen[k]: v for k, v in selected.ranks().items()},
        "sentence": selected.sentence() if len(chosen) > 1 else None,
        "settings": {**{k: getattr(args, k) for k in options},
                     **{k: v for s in selected.settings.values() for k, v in s.items() if k not in ("fill", "segments")},
                     "steps": args.steps, "mu_grid": args.mu_grid,
                     "num_subsets": args.num_subsets, "seed": args.seed},
        "seconds": round(seconds, 3),
    }
    text = json.dumps(record, indent=2, allow_nan=False)  # before anything is written: a NaN fails here
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jaxviz.atomic_write_bytes(out / "faithfulness.json", text.encode())
        _write_npz(out / "faithfulness.npz", {
            "images": idx, "targets": np.asarray(selected.targets, np.int64), "layer": np.asarray(layer),
            **{f"maps_{chosen[k]}": np.asarray(v, np.float32) for k, v in selected.maps.items()}})
        fig = plots.plot_attribution_maps(images, selected.maps,
                                          titles=_titles(network, data, idx, targets, predicted, layer))
        plots.save_figure(fig, out / "faithfulness.png")
    print(text if args.json else _table(record))


# --------------------------------------------------------------------------- sanity


def cmd_sanity(args) -> None:
    """The randomization test of the chosen gradient methods: a table or JSON, and sanity.json / sanity.png."""
    out = check_writable(args.out, directory=True, option="--out") if args.out else None
    data, network = load(args)
    idx = _indices(args.images, data, "--images") if args.images is not None else \
        _default_images(data, DEFAULT_SANITY_IMAGES)
    if len(idx) == 0:
        raise ValueError("--data: the dataset has no images")
    methods = registry.resolve(args.methods, argument="--methods", sanity=True)
    options = {k: v for k, v in method_options(args, methods).items() if k != "seed"}
    if "fill" in options:
        options["fill"] = resolve_fill(args.fill, data.images[idx], network, mean_over="images")
    with _named_as_options(args):  # every method's requirements, before any work
        check_sanity_methods(network, args.methods, seed=args.seed, **options)
    start = time.perf_counter()
    with _named_as_options(args):
        check = jaxviz.randomization_test(network, data.images[idx], methods=args.methods, mode=args.mode,
                                          seed=args.seed, progress=True, **options)
    seconds = time.perf_counter() - start
    means = check.mean()
    record = {
        "mode": check.mode, "layers": list(check.layers), "initializer": check.initializer,
        "explained": f"{network.output_layer} (the trained model's predicted output)", "images": idx.tolist(),
        "targets": check.targets.tolist(), "threshold": PASS_THRESHOLD, "passes": check.passes(),
        "final": check.final(), "mean": means, "per_image": check.correlations,
        "sentence": check.sentence(),
        "settings": {"methods": list(args.methods), **{k: getattr(args, k) for k in options}, "seed": args.seed},
        "seconds": round(seconds, 3),
    }
    text = json.dumps(jaxviz.jsonable(record), indent=2, allow_nan=False)  # undefined correlations (NaN): null
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jaxviz.atomic_write_bytes(out / "sanity.json", text.encode())
        fig = plots.plot_sanity(check.layers, {check.labels[m]: v for m, v in means.items()}, mode=check.mode,
                                threshold=PASS_THRESHOLD)
        plots.save_figure(fig, out / "sanity.png")
    if args.json:
        print(text)
    else:
        width = max(len(check.labels[m]) for m in check.methods)
        lines = [f"{len(idx)} images, {check.mode} randomization of {', '.join(check.layers)} "
                 f"({check.initializer} initializer); mean Spearman correlation with the trained model's map:"]
        lines += [f"  {check.labels[m]:<{width}}  " + " ".join(f"{format_correlation(v):>5}" for v in means[m])
                  for m in check.methods]
        lines.append(check.sentence())
        print("\n".join(lines))
