"""The ``jaxviz`` command line. Uses only the public API.

    jaxviz report --out DIR          every analysis as an HTML page (the main job)
    jaxviz evaluate --json           accuracy, per-class accuracy, confusion matrix
    jaxviz occlude --out DIR         occlusion maps (.npz + PNG overlays)
    jaxviz filters | activations | topk | tsne | summary | train
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import jaxviz
from jaxviz import plots
from jaxviz.report import ReportSettings, check_output_dir, make_report

DATA_CHOICES = ("sample", "cifar10", "folder")


# --------------------------------------------------------------------------- shared options


def _add_data(p: argparse.ArgumentParser, default_split: str = "test") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATA_CHOICES, default="sample",
                   help="sample: the embedded 1,000 test images (default); cifar10: the official archive "
                        "(from --data-dir or the cache, downloaded if missing); folder: DIR/<class>/*.png|jpg")
    g.add_argument("--data-dir", help="directory holding the CIFAR-10 archive/folder, or the image folder")
    g.add_argument("--split", choices=("train", "test"), default=default_split, help="CIFAR-10 split")
    g.add_argument("--layout", choices=("binary", "python"), default="binary", help="CIFAR-10 archive layout")
    g.add_argument("--no-download", action="store_true", help="never download CIFAR-10")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="weights file from `jaxviz train` (default: the shipped pretrained CNN)")


def _load_data(args) -> jaxviz.Dataset:
    if args.data == "sample":
        return jaxviz.load_sample()
    if args.data == "folder":
        if not args.data_dir:
            raise ValueError("--data-dir: required with --data folder (a directory of class folders)")
        return jaxviz.load_image_folder(args.data_dir)
    return jaxviz.load_cifar10(args.split, data_dir=args.data_dir, layout=args.layout,
                               download=not args.no_download)


def _load(args) -> tuple[jaxviz.Dataset, jaxviz.Weights]:
    """The data (labels re-indexed into the model's classes) and the weights."""
    weights = _load_weights(args)
    return _load_data(args).with_classes(weights.class_names), weights


def _load_weights(args) -> jaxviz.Weights:
    return jaxviz.load_pretrained() if not args.weights else jaxviz.load_weights(args.weights)


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from None


# --------------------------------------------------------------------------- commands


def cmd_evaluate(args) -> None:
    data, w = _load(args)
    logits = jaxviz.predict(w.model, w.variables, data.images, progress="evaluate")
    report = jaxviz.classification_report(data.labels, logits, data.class_names)
    if args.confusion_png:
        plots.save_figure(plots.plot_confusion(np.asarray(report["confusion_matrix"]), data.class_names,
                                               title=f"Confusion matrix ({len(data)} images)"), args.confusion_png)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"accuracy {report['accuracy']:.4f} on {report['images']} images ({data.source})")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {acc:.3f}")
    for p in report["most_confused"]:
        print(f"  confused: {p['a']} <-> {p['b']}: {p['count']}")


def cmd_train(args) -> None:
    data = _load_data(args)
    test = None
    if args.data == "cifar10":
        test = jaxviz.load_cifar10("test", data_dir=args.data_dir, layout=args.layout, download=not args.no_download)
    config = jaxviz.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, peak_lr=args.lr, seed=args.seed)
    result = jaxviz.train(config, data, test, checkpoint_dir=args.checkpoint_dir)
    digest = jaxviz.save_weights(args.out, result.model, result.variables, class_names=data.class_names,
                                 metadata={"dataset": data.source, "history": result.history})
    print(json.dumps({"weights": str(args.out), "sha256": digest, "history": result.history}))


def cmd_summary(args) -> None:
    w = _load_weights(args)
    print(jaxviz.summary_table(w.model, w.variables))


def cmd_filters(args) -> None:
    w = _load_weights(args)
    cells, filled = jaxviz.filter_grid(jaxviz.conv_kernels(w.model, w.variables, args.layer))
    plots.save_figure(plots.plot_filters(cells, filled, title=f"{args.layer} kernels"), args.out)
    print(args.out)


def cmd_activations(args) -> None:
    data, w = _load(args)
    idx = _ints(args.images) or [0, 1, 2, 3]
    images = data.subset(idx).images
    maps = jaxviz.activation_maps(w.model, w.variables, images, layer=args.layer)
    plots.save_figure(plots.plot_activation_maps(images, maps, channels=_ints(args.channels), layer=args.layer),
                      args.out)
    print(args.out)


def _top(args, data, w, units: list[int] | None):
    """Scores of every unit, their top K, selectivity, and the units to show."""
    feats = jaxviz.layer_features(w.model, w.variables, data.images, layer=args.layer, progress="features")
    scores = jaxviz.unit_scores(feats)
    top = jaxviz.top_k_images(scores, args.k)
    sel = jaxviz.unit_selectivity(top.indices, data.labels, len(data.class_names), scores=scores)
    if units is None:
        units = jaxviz.pick_units(sel, args.num_units, alive=scores.max(0) > 0)
    elif min(units) < 0 or max(units) >= scores.shape[1]:
        raise ValueError(f"--units: expected indices in [0, {scores.shape[1]}) for layer {args.layer}, got {units}")
    return scores, top, sel, units


def cmd_topk(args) -> None:
    data, w = _load(args)
    out = check_output_dir(args.out)
    _, top, sel, units = _top(args, data, w, _ints(args.units))
    fig = plots.plot_top_k(data.images[top.indices[:, units]], units, labels=data.labels[top.indices[:, units]],
                           class_names=data.class_names, title=f"Top {args.k} images of {args.layer} units")
    plots.save_figure(fig, out / "topk.png")
    record = {"layer": args.layer, "units": units,
              "top_indices": {u: top.indices[:, u].tolist() for u in units},
              "selectivity": {u: {"class": data.class_names[sel.majority_class[u]], "score": float(sel.score[u])}
                              for u in units}}
    jaxviz.atomic_write_bytes(out / "topk.json", json.dumps(record, indent=2).encode())
    print(json.dumps(record["selectivity"]))


def _fill(text: str, images: np.ndarray):
    if text == "blur":
        return "blur"
    if text == "mean":  # per-channel mean of the occluded images
        return images.mean(axis=(0, 1, 2))
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else np.asarray(values, np.float32)


def _classes(text: str, class_names: tuple[str, ...]) -> list[int]:
    out = []
    for c in text.split(","):
        c = c.strip()
        if c in class_names:
            out.append(class_names.index(c))
        elif c.isdigit() and int(c) < len(class_names):
            out.append(int(c))
        else:
            raise ValueError(f"--classes: expected class names or indices from {list(class_names)}, got {c!r}")
    return out


def cmd_occlude(args) -> None:
    """Occlude each chosen unit's top-K images (default) or the images given by --images."""
    data, w = _load(args)
    out = check_output_dir(args.out)
    units = _ints(args.units)
    if args.classes is not None:
        if args.layer != "logits":
            raise ValueError("--classes: selects classifier outputs; use it with --layer logits")
        units = _classes(args.classes, w.class_names)
    if args.images is None:  # the notebook: the top-K images of each unit, unit-major
        _, top, _, units = _top(args, data, w, units)
        idx = top.indices[:, units].T.reshape(-1)
        targets = np.repeat(np.arange(len(units)), args.k)
        rows, titles = args.k, [f"unit {u}" for u in units]
    else:
        idx, targets = np.asarray(_ints(args.images)), None
        rows, titles = 1, [f"image {i}" for i in idx]
    images = data.subset(idx).images
    x = jaxviz.to_model_input(images)
    start = time.perf_counter()
    occ = jaxviz.occlude(jaxviz.layer_fn(w.model, args.layer), x, params=w.variables, window=args.window,
                         stride=args.stride, fill=_fill(args.fill, x), anchor=args.anchor, units=units,
                         progress=True)
    seconds = time.perf_counter() - start
    arrays = {"base": occ.base, "grid": occ.grid, "images": idx, "row_spans": occ.row_spans,
              "col_spans": occ.col_spans, "units": np.asarray(units if units is not None else [], np.int64)}
    if occ.base.ndim == 2:  # one value per unit: a pixel map per image for its own (or strongest) unit
        if targets is None:
            targets = occ.base.argmax(1)
        arrays["targets"] = targets
        arrays["pixel"] = pixel = occ.pixel_map(targets)
        heat = occ.grid[np.arange(len(idx)), ..., targets]
        masked = np.stack([jaxviz.apply_mask(im, jaxviz.heatmap_mask(h, im.shape[:2])) for im, h in zip(images, heat)])
        grid_of = lambda a: np.swapaxes(a.reshape(len(titles), rows, *a.shape[1:]), 0, 1) if rows > 1 else a[None]
        plots.save_figure(plots.plot_heatmaps(grid_of(images), grid_of(pixel), titles), out / "heatmaps.png")
        plots.save_figure(plots.plot_masked(grid_of(masked), titles), out / "masks.png")
    with jaxviz.atomic_path(out / "occlusion.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    print(json.dumps({"npz": str(out / "occlusion.npz"), "images": len(idx), "grid_shape": list(occ.grid.shape),
                      "seconds": round(seconds, 3)}))


def cmd_tsne(args) -> None:
    data, w = _load(args)
    feats = jaxviz.unit_scores(jaxviz.layer_features(w.model, w.variables, data.images, layer=args.layer,
                                                     progress="features"))
    emb = jaxviz.tsne(feats, perplexity=args.perplexity, max_iter=args.max_iter, seed=args.seed,
                      subsample=args.points)
    labels = data.labels[emb.indices]
    plots.save_figure(plots.plot_tsne(emb.coords, labels, data.class_names,
                                      title=f"t-SNE of {args.layer} ({emb.seconds:.1f} s)"), args.out)
    knn = jaxviz.knn_agreement(emb.coords, labels, len(data.class_names))
    agreement = {c: round(float(v), 3) for c, v in zip(data.class_names, knn) if not np.isnan(v)}
    print(json.dumps({"png": args.out, "seconds": round(emb.seconds, 2), "knn_agreement": agreement}))


def cmd_report(args) -> None:
    settings = ReportSettings(layer=args.layer, units=tuple(_ints(args.units)) if args.units else None,
                              num_units=args.num_units, k=args.k, window=args.window, stride=args.stride,
                              tsne_points=args.tsne_points, tsne_iter=args.tsne_iter)
    check_output_dir(args.out)
    data, weights = _load(args)
    start = time.perf_counter()
    make_report(args.out, weights=weights, dataset=data, settings=settings)
    print(f"wrote {Path(args.out) / 'index.html'} in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxviz", description="What did this CNN learn? (JAX/Flax)")
    parser.add_argument("--version", action="version", version=f"jaxviz {jaxviz.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("report", help="write an HTML report of every analysis (the main job)")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--out", default="jaxviz-report", help="output directory (default: jaxviz-report)")
    p.add_argument("--layer", default="fc1")
    p.add_argument("--units", help="units to show, e.g. 3,17,42 (default: picked by selectivity)")
    p.add_argument("--num-units", type=int, default=6)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--window", type=int, default=11)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--tsne-points", type=int, default=1000)
    p.add_argument("--tsne-iter", type=int, default=1000)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--confusion-png", help="also write the confusion matrix as a PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the CNN (resumable) and write a weights file")
    _add_data(p, default_split="train")
    p.add_argument("--out", default="weights.msgpack", help="weights file to write")
    p.add_argument("--checkpoint-dir", default="jaxviz-checkpoints")
    p.add_argument("--epochs", type=int, default=jaxviz.TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=jaxviz.TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=jaxviz.TrainConfig.peak_lr)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("summary", help="layer names, output shapes, parameter counts")
    _add_weights(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("filters", help="PNG of a conv layer's kernels")
    _add_weights(p)
    p.add_argument("--layer", default="conv1")
    p.add_argument("--out", default="filters.png")
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser("activations", help="PNG of a conv layer's feature maps for some images")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--layer", default="conv1")
    p.add_argument("--images", help="dataset indices, e.g. 0,1,2")
    p.add_argument("--channels", help="channels to show (default the first 8)")
    p.add_argument("--out", default="activations.png")
    p.set_defaults(func=cmd_activations)

    for name, func, helptext in (("topk", cmd_topk, "top-K images per unit, with selectivity"),
                                 ("occlude", cmd_occlude, "occlusion maps (.npz) and PNG overlays")):
        p = sub.add_parser(name, help=helptext)
        _add_data(p)
        _add_weights(p)
        p.add_argument("--layer", default="fc1")
        p.add_argument("--units", help="units, e.g. 3,17 (default: picked by selectivity)")
        p.add_argument("--num-units", type=int, default=5)
        p.add_argument("--k", type=int, default=10, help="top images per unit")
        p.add_argument("--out", default=name, help="output directory")
        if name == "occlude":
            p.add_argument("--images", help="dataset indices to occlude instead of each unit's top K")
            p.add_argument("--classes", help="with --layer logits: class names or indices to keep")
            p.add_argument("--window", type=int, default=11)
            p.add_argument("--stride", type=int, default=4)
            p.add_argument("--fill", default="0", help="a value, r,g,b, 'mean' or 'blur' (model input space, 0..1)")
            p.add_argument("--anchor", choices=("centered", "valid"), default="centered")
        p.set_defaults(func=func)

    p = sub.add_parser("tsne", help="t-SNE scatter of a layer's features")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--layer", default="fc1")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tsne.png")
    p.set_defaults(func=cmd_tsne)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:  # user errors: one line, no traceback
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
