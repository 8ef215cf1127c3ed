"""The ``jaxviz`` command line. Uses only the public API.

    jaxviz report --out DIR          every analysis as an HTML page (the main job)
    jaxviz evaluate --json           accuracy, per-class accuracy, confusion matrix
    jaxviz occlude --out DIR         occlusion maps (.npz + PNG overlays)
    jaxviz filters | activations | topk | tsne | summary | train
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import jaxviz
from jaxviz import plots
from jaxviz.report import ReportSettings, make_report

DATA_CHOICES = ("sample", "cifar10", "folder")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _check_writable(path: str | os.PathLike, *, directory: bool, option: str) -> Path:
    """Fail before any work if ``path`` cannot be written later; create nothing.

    A directory target may exist (it must be a writable directory) or not (its
    nearest existing parent must be a writable directory); a file target must
    not be a directory and its parent must be, or be creatable, likewise.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise NotADirectoryError(f"{option}: expected a directory, but {str(path)!r} is a file")
        if not directory and path.is_dir():
            raise IsADirectoryError(f"{option}: expected a file name, but {str(path)!r} is a directory")
        target = path if directory else path.parent
    else:
        target = path.parent
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(f"{option}: cannot create {str(path)!r}: {str(target)!r} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(f"{option}: cannot write {str(path)!r}: {str(target)!r} is not writable")
    return path


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    data = _load_data(args).with_classes(weights.class_names)
    jaxviz.check_images_fit(weights.model, data.images, name=f"--data {args.data}")
    return data, weights


def _load_weights(args) -> jaxviz.Weights:
    return jaxviz.load_pretrained() if not args.weights else jaxviz.load_weights(args.weights)


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{option}: expected a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option}: expected at least one integer, got {text!r}")
    return values


# --------------------------------------------------------------------------- commands


def cmd_evaluate(args) -> None:
    if args.confusion_png:
        _check_writable(args.confusion_png, directory=False, option="--confusion-png")
    data, w = _load(args)
    logits = jaxviz.predict(w.model, w.variables, data.images, progress="evaluate")
    report = jaxviz.classification_report(data.labels, logits, data.class_names)
    if args.confusion_png:
        plots.save_figure(plots.plot_confusion(np.asarray(report["confusion_matrix"]), data.class_names,
                                               title=f"Confusion matrix ({len(data)} images)"), args.confusion_png)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
        return
    print(f"accuracy {report['accuracy']:.4f} on {report['images']} images ({data.source})")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {acc:.3f}")
    for p in report["most_confused"]:
        print(f"  confused: {p['a']} <-> {p['b']}: {p['count']}")


def cmd_train(args) -> None:
    # Everything that can be checked without the data is checked first: the settings, the weights file's
    # and the checkpoint directory's writability (a failure after hours of training would lose the run).
    from jaxviz.train import check_output_file, prepare_checkpoint_dir  # (jaxviz.train is the function)

    flags = {"epochs": "--epochs", "batch_size": "--batch-size", "peak_lr": "--lr", "seed": "--seed"}
    try:
        config = jaxviz.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, peak_lr=args.lr, seed=args.seed)
    except (ValueError, TypeError) as e:
        name, _, rest = str(e).partition(": ")
        raise type(e)(f"{flags[name]}: {rest}" if name in flags else str(e)) from None
    check_output_file(args.out, "--out")
    prepare_checkpoint_dir(args.checkpoint_dir, "--checkpoint-dir")
    data = _load_data(args)
    test = None
    if args.data == "cifar10":
        test = jaxviz.load_cifar10("test", data_dir=args.data_dir, layout=args.layout, download=not args.no_download)
    result = jaxviz.train(config, data, test, checkpoint_dir=args.checkpoint_dir, resume=not args.fresh)
    digest = jaxviz.save_weights(args.out, result.model, result.variables, class_names=data.class_names,
                                 metadata={"dataset": data.source, "history": result.history})
    print(json.dumps({"weights": str(args.out), "sha256": digest, "history": result.history}, allow_nan=False))


def cmd_summary(args) -> None:
    w = _load_weights(args)
    print(jaxviz.summary_table(w.model, w.variables))


def cmd_filters(args) -> None:
    _check_writable(args.out, directory=False, option="--out")
    w = _load_weights(args)
    cells, filled = jaxviz.filter_grid(jaxviz.conv_kernels(w.model, w.variables, args.layer))
    plots.save_figure(plots.plot_filters(cells, filled, title=f"{args.layer} kernels"), args.out)
    print(args.out)


def cmd_activations(args) -> None:
    _check_writable(args.out, directory=False, option="--out")
    data, w = _load(args)
    idx = _ints(args.images, "--images") or [0, 1, 2, 3]
    images = data.subset(idx).images
    maps = jaxviz.activation_maps(w.model, w.variables, images, layer=args.layer)
    channels = _ints(args.channels, "--channels")
    if channels is not None and (min(channels) < 0 or max(channels) >= maps.shape[-1]):
        raise ValueError(f"--channels: layer {args.layer} has {maps.shape[-1]} channels; expected indices in "
                         f"[0, {maps.shape[-1]}), got {channels}")
    plots.save_figure(plots.plot_activation_maps(images, maps, channels=channels, layer=args.layer), args.out)
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
    out = _check_writable(args.out, directory=True, option="--out")
    data, w = _load(args)
    _, top, sel, units = _top(args, data, w, _ints(args.units, "--units"))
    _make_dir(out)
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
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    channels = images.shape[-1]
    if len(values) not in (1, channels) or not np.all(np.isfinite(values)):
        raise ValueError(f"--fill: expected a number, {channels} comma-separated numbers (one per channel, "
                         f"model input space 0..1), 'mean' or 'blur'; got {text!r}")
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
    out = _check_writable(args.out, directory=True, option="--out")
    data, w = _load(args)
    units = _ints(args.units, "--units")
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
        idx, targets = np.asarray(_ints(args.images, "--images")), None
        rows, titles = 1, [f"image {i}" for i in idx]
    images = data.subset(idx).images
    x = jaxviz.to_model_input(images)
    fill = _fill(args.fill, x)
    start = time.perf_counter()
    occ = jaxviz.occlude(jaxviz.layer_fn(w.model, args.layer), x, params=w.variables, window=args.window,
                         stride=args.stride, fill=fill, anchor=args.anchor, units=units,
                         progress=True)
    seconds = time.perf_counter() - start
    _make_dir(out)
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
    _check_writable(args.out, directory=False, option="--out")
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
    """Check the settings, the output folder and the data, in that order, before anything is written."""
    from jaxviz.report import check_report_dir

    units = _ints(args.units, "--units")
    settings = ReportSettings(layer=args.layer, units=tuple(units) if units is not None else None,
                              num_units=args.num_units, k=args.k, window=args.window, stride=args.stride,
                              tsne_points=args.tsne_points, tsne_iter=args.tsne_iter)
    check_report_dir(args.out)  # creates nothing; make_report checks the settings against the data first too
    data, weights = _load(args)
    start = time.perf_counter()
    make_report(args.out, weights=weights, dataset=data, settings=settings)
    print(f"wrote {Path(args.out) / 'index.html'} in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxviz", description="What did this CNN learn? (JAX/Flax)")
    parser.add_argument("--version", action="version", version=f"jaxviz {jaxviz.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("report", help="write an HTML report of every analysis (the main job)")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--out", default="jaxviz-report", help="output directory (default: jaxviz-report)")
    p.add_argument("--layer", default="fc1")
    p.add_argument("--units", help="units to show, e.g. 3,17,42 (default: picked by selectivity)")
    p.add_argument("--num-units", type=positive_int, default=6)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--window", type=positive_int, default=11)
    p.add_argument("--stride", type=positive_int, default=4)
    p.add_argument("--tsne-points", type=positive_int, default=1000)
    p.add_argument("--tsne-iter", type=positive_int, default=1000)
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
    p.add_argument("--checkpoint-dir", default="jaxviz-checkpoints",
                   help="where a checkpoint is written after every epoch (default: jaxviz-checkpoints); a run "
                        "resumes from it only if it holds the same run (data, settings, model)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore the checkpoint in --checkpoint-dir and overwrite it")
    p.add_argument("--epochs", type=int, default=jaxviz.TrainConfig.epochs, help="number of epochs (>= 1)")
    p.add_argument("--batch-size", type=int, default=jaxviz.TrainConfig.batch_size, help="images per step (>= 1)")
    p.add_argument("--lr", type=float, default=jaxviz.TrainConfig.peak_lr, help="peak learning rate (> 0)")
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
        p.add_argument("--num-units", type=positive_int, default=5)
        p.add_argument("--k", type=positive_int, default=10, help="top images per unit")
        p.add_argument("--out", default=name, help="output directory")
        if name == "occlude":
            p.add_argument("--images", help="dataset indices to occlude instead of each unit's top K")
            p.add_argument("--classes", help="with --layer logits: class names or indices to keep")
            p.add_argument("--window", type=positive_int, default=11)
            p.add_argument("--stride", type=positive_int, default=4)
            p.add_argument("--fill", default="0", help="a value, r,g,b, 'mean' or 'blur' (model input space, 0..1)")
            p.add_argument("--anchor", choices=("centered", "valid"), default="centered")
        p.set_defaults(func=func)

    p = sub.add_parser("tsne", help="t-SNE scatter of a layer's features")
    _add_data(p)
    _add_weights(p)
    p.add_argument("--layer", default="fc1")
    p.add_argument("--points", type=positive_int, default=1000)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tsne.png")
    p.set_defaults(func=cmd_tsne)
    return parser


def _terminate(signum, frame):
    # SIGTERM's default action kills the process at once, skipping the cleanup in
    # `finally` blocks (temporary files, report folders, locks); exit through them.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:  # user errors: one line, no traceback
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
