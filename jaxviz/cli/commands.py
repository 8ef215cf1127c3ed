"""The ``jaxviz`` commands. Each checks its options and output paths before any work."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import jaxviz
from jaxviz import plots
from jaxviz.checks import ArgumentError
from jaxviz.cli._options import (
    as_option,
    check_writable,
    load,
    load_data,
    load_network,
    model_outputs,
    settings_from,
)
from jaxviz.cli.runs import check_run_options, run_all

# the ReportSettings fields each command exposes (see build_parser)
REPORT_FIELDS = ("layer", "units", "num_units", "k", "window", "stride", "anchor", "threshold", "sigma",
                 "tsne_points", "tsne_iter", "perplexity", "activation_images", "trust_images", "rise_masks", "trust_methods",
                 "sanity_methods", "sanity_images", "vis_steps", "cka_batch", "tcav_runs", "seed")
STUDY_FIELDS = ("layer", "units", "num_units", "k")
OCCLUDE_FIELDS = (*STUDY_FIELDS, "window", "stride", "anchor", "threshold", "sigma")
TRAIN_FIELDS = tuple(f for f in jaxviz.TrainConfig.__dataclass_fields__)


def _study(data, network, settings):
    """The unit study of the chosen layer (settings already checked against the data)."""
    layer = settings.layer or network.feature_layer
    scores = jaxviz.unit_scores(model_outputs(network, data.images, layer=layer, progress="features"))
    study = jaxviz.study_units(scores, data.labels, len(data.class_names), k=settings.k, count=settings.num_units,
                               units=settings.units)
    return layer, study


def _checked(args, fields, data, network, *, uses_k: bool = True):
    """The settings of ``fields``, checked alone and against the data and the model; errors name the options."""
    settings = settings_from(jaxviz.ReportSettings, args, fields)
    unused = {"window": 1} if "window" not in fields else {}  # checks of settings the command does not use pass
    if not uses_k:  # k and num_units only have to fit when the unit study picks units and their top-K images
        unused.update(k=1, num_units=1)
    try:
        jaxviz.check_report_settings(dataclasses.replace(settings, **unused), network, data)
    except (ValueError, TypeError) as e:
        raise as_option(e, fields, {"dataset": f"--data {args.data}"}) from None
    return settings


@contextlib.contextmanager
def _naming(*fields: str):
    """Errors of the block that start with one of ``fields`` ("layer: ...") name its option ("--layer: ...")."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise as_option(e, fields) from None


def _indices(values, data, option: str) -> np.ndarray:
    """``--images``: dataset indices in [0, N)."""
    idx = np.asarray(values, np.int64)
    if idx.min() < 0 or idx.max() >= len(data):
        raise ArgumentError(f"{option}", f"expected indices in [0, {len(data)}) (the dataset has {len(data)} images), "
                         f"got {list(values)}")
    return idx


def cmd_evaluate(args) -> None:
    if args.confusion_png:
        check_writable(args.confusion_png, directory=False, option="--confusion-png")
    data, network = load(args)
    if not network.is_classifier:
        raise ValueError("--model: the model has no class names (set CLASS_NAMES), so it cannot be evaluated")
    logits = model_outputs(network, data.images, progress="evaluate")
    report = jaxviz.classification_report(data.labels, logits, network.class_names)
    if args.confusion_png:
        plots.save_figure(plots.plot_confusion(report.confusion_matrix, report.class_names,
                                               title=f"Confusion matrix ({len(data)} images)"), args.confusion_png)
    if args.json:
        print(json.dumps(jaxviz.jsonable(report), indent=2, allow_nan=False))
        return
    print(f"accuracy {report.accuracy:.4f} on {report.images} images ({data.source})")
    for name, acc in report.per_class_accuracy.items():
        print(f"  {name:<12} {acc:.3f}")
    for p in report.most_confused:
        print(f"  confused: {p.a} <-> {p.b}: {p.count}")


def cmd_train(args) -> None:
    # Everything that can be checked without the data is checked first: the settings, the weights file's
    # and the checkpoint directory's writability (a failure after hours of training would lose the run).
    config = settings_from(jaxviz.TrainConfig, args, TRAIN_FIELDS)
    jaxviz.check_output_file(args.out, "--out")
    jaxviz.prepare_checkpoint_dir(args.checkpoint_dir, "--checkpoint-dir")
    data = load_data(args)
    test = None
    if args.data == "cifar10":
        test = jaxviz.load_cifar10("test", data_dir=args.data_dir, layout=args.layout, download=not args.no_download)
    result = jaxviz.train(config, data, test, checkpoint_dir=args.checkpoint_dir, resume=not args.fresh)
    digest = jaxviz.save_weights(args.out, result.model, result.variables, class_names=data.class_names,
                                 metadata={"dataset": data.source, "history": result.history})
    print(json.dumps({"weights": str(args.out), "sha256": digest, "history": result.history}, allow_nan=False))


def cmd_summary(args) -> None:
    print(load_network(args).summary_table())


def cmd_filters(args) -> None:
    check_writable(args.out, directory=False, option="--out")
    network = load_network(args)
    layer = args.layer or (network.conv_layers() or network.layer_names)[0]
    with _naming("layer"):
        cells, filled = jaxviz.filter_grid(network.kernel(layer))
    plots.save_figure(plots.plot_filters(cells, filled, title=f"{layer} kernels"), args.out)
    print(args.out)


def cmd_activations(args) -> None:
    check_writable(args.out, directory=False, option="--out")
    data, network = load(args)
    layer = args.layer or (network.conv_layers() or network.layer_names)[0]
    images = data.subset(_indices(args.images, data, "--images")).images
    with _naming("layer"):
        maps = jaxviz.activation_maps(network, images, layer=layer)
    channels = args.channels
    if channels is not None and (min(channels) < 0 or max(channels) >= maps.shape[-1]):
        raise ValueError(f"--channels: layer {layer} has {maps.shape[-1]} channels; expected indices in "
                         f"[0, {maps.shape[-1]}), got {list(channels)}")
    plots.save_figure(plots.plot_activation_maps(images, maps, channels=channels, layer=layer), args.out)
    print(args.out)


def cmd_topk(args) -> None:
    out = check_writable(args.out, directory=True, option="--out")
    data, network = load(args)
    settings = _checked(args, STUDY_FIELDS, data, network)
    layer, study = _study(data, network, settings)
    units = list(study.units)
    out.mkdir(parents=True, exist_ok=True)
    top = study.top.indices[:, units]
    plots.save_figure(plots.plot_top_k(data.images[top], units, labels=data.labels[top], class_names=data.class_names,
                                       title=f"Top {settings.k} images of {layer} units"), out / "topk.png")
    sel = study.selectivity
    record = {"layer": layer, "units": units, "top_indices": {u: study.top.indices[:, u].tolist() for u in units},
              "selectivity": {u: {"class": data.class_names[sel.majority_class[u]], "score": float(sel.score[u])}
                              for u in units}}
    jaxviz.atomic_write_bytes(out / "topk.json", json.dumps(record, indent=2).encode())
    print(json.dumps(record["selectivity"]))


def resolve_fill(text: str, images, network: jaxviz.Network, *, mean_over: str):
    """``--fill`` as a method takes it, in model-input space: ``"blur"``, a number, per-channel values, or for
    ``"mean"`` the per-channel mean of ``images`` in model input: ``mean_over="images"`` (uint8 images: the
    explained or occluded ones) or ``"dataset"`` (a ``Dataset``: every image, accumulated over blocks in
    float64, as a run over the whole dataset uses). The one reading of --fill."""
    if mean_over not in ("images", "dataset"):
        raise ValueError(f"mean_over: expected 'images' or 'dataset', got {mean_over!r}")
    channels = network.input_spec.shape[-1]
    if text == "blur":
        return "blur"
    if text == "mean":
        pixels = images.images if mean_over == "dataset" else images
        total = sum(np.asarray(network.to_input(pixels[i:i + 1024]), np.float64).sum((0, 1, 2))
                    for i in range(0, len(pixels), 1024))
        return (total / max(pixels[..., 0].size, 1)).astype(np.float32)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, channels) or not np.all(np.isfinite(values)):
        raise ValueError(f"--fill: expected a number, {channels} comma-separated numbers (one per channel, "
                         f"in model-input space), 'mean' or 'blur'; got {text!r}")
    return values[0] if len(values) == 1 else np.asarray(values, np.float32)


def _classes(text: str, class_names: tuple[str, ...]) -> tuple[int, ...]:
    out = []
    for c in text.split(","):
        c = c.strip()
        if c in class_names:
            out.append(class_names.index(c))
        elif c.isdigit() and int(c) < len(class_names):
            out.append(int(c))
        else:
            raise ValueError(f"--classes: expected class names or indices from {list(class_names)}, got {c!r}")
    return tuple(out)


def _occlude_all(args) -> None:
    """``--all``: every image of the dataset, every kept unit of the layer, into a resumable store."""
    if args.images is not None:
        raise ValueError("--images: not with --all (which occludes every image of --data)")
    defaults = {f.name: f.default for f in dataclasses.fields(jaxviz.ReportSettings)}
    for name, why in (("num_units", "every unit of --layer, or --units, is kept"),
                      ("threshold", "no masks are drawn"), ("sigma", "no masks are drawn")):
        if getattr(args, name) != defaults[name]:
            raise ValueError(f"--{name.replace('_', '-')}: not with --all ({why}), got {getattr(args, name)}")

    def choose(data, network):
        if args.classes is not None:
            if not network.is_classifier or args.layer not in (None, network.output_layer):
                raise ValueError(f"--classes: selects classifier outputs; use it with --layer "
                                 f"{network.output_layer} on a model with class names")
            args.layer, args.units = network.output_layer, _classes(args.classes, network.class_names)
        settings = _checked(args, OCCLUDE_FIELDS, data, network, uses_k=False)
        return {"layer": settings.layer or network.feature_layer, "units": settings.units,
                "fill": resolve_fill(args.fill, data, network, mean_over="dataset"),
                "window": settings.window, "stride": settings.stride, "anchor": settings.anchor, "k": settings.k}

    run_all(args, "occlusion", choose)


def cmd_occlude(args) -> None:
    """Occlude each chosen unit's top-K images (default) or the images given by --images; with --all, every
    image of the dataset into a resumable store."""
    check_run_options(args)
    if args.all:
        return _occlude_all(args)
    out = check_writable(args.out, directory=True, option="--out")
    data, network = load(args)
    if args.classes is not None:
        if not network.is_classifier or args.layer not in (None, network.output_layer):
            raise ValueError(f"--classes: selects classifier outputs; use it with --layer {network.output_layer} "
                             "on a model with class names")
        args.layer, args.units = network.output_layer, _classes(args.classes, network.class_names)
    if args.images is not None and args.layer is None:  # given images: the output layer's units by default
        args.layer = network.output_layer
    settings = _checked(args, OCCLUDE_FIELDS, data, network, uses_k=args.images is None)
    x_fill = resolve_fill("0" if args.fill == "mean" else args.fill, None, network, mean_over="images")  # checked
    start = time.perf_counter()
    if args.images is None:  # the notebook: the top-K images of each unit, regrouped per unit
        layer, study = _study(data, network, settings)
        if args.fill == "mean":  # per-channel mean of the images that are occluded
            x_fill = resolve_fill("mean", data.images[study.shown_indices()], network, mean_over="images")
        result = jaxviz.occlude_top_images(network, study, data.images, layer=layer, window=settings.window,
                                           stride=settings.stride, anchor=settings.anchor, fill=x_fill,
                                           threshold=settings.threshold, sigma=settings.sigma, progress=True)
        occ, titles = result.occlusion, list(study.units)
        idx, images, pixel, masked = study.shown_indices(), result.images, result.pixel, result.masked
        targets = study.shown_owner()
    else:  # given images, each with its strongest kept unit
        layer = settings.layer or network.output_layer
        idx = _indices(args.images, data, "--images")
        plain = data.subset(idx).images
        model_outputs(network, plain, idx, layer=layer)
        if args.fill == "mean":
            x_fill = resolve_fill("mean", plain, network, mean_over="images")
        occ = jaxviz.occlude(network.score_fn(layer), network.to_input(plain), params=network.variables,
                             window=settings.window, stride=settings.stride, fill=x_fill, anchor=settings.anchor,
                             units=settings.units, progress=True)
        targets = occ.base.argmax(1)
        heat = occ.grid[np.arange(len(idx)), ..., targets]
        classes = network.class_names if network.is_classifier and layer == network.output_layer else None
        titles = []
        for i, t in zip(idx, targets):
            unit, true = (occ.units[t] if occ.units else int(t)), data.class_names[data.labels[i]]
            if classes is not None and settings.units is None:  # the strongest class is the predicted one
                titles.append(plots.image_title(f"image {i}\n", true=true, predicted=classes[unit], sep="\n"))
            else:
                titles.append(plots.image_title(f"image {i}\n", true=true, explained="strongest: " + (
                    classes[unit] if classes is not None else f"{layer}[{unit}]"), sep="\n"))
        explained = np.asarray(occ.units)[targets] if occ.units else targets  # outputs of f
        images, pixel = plain[None], occ.pixel_map(explained)[None]
        masked = np.stack([jaxviz.apply_mask(im, jaxviz.heatmap_mask(h, im.shape[:2], threshold=settings.threshold,
                                                                     sigma=settings.sigma))
                           for im, h in zip(plain, heat)])[None]
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    plots.save_figure(plots.plot_heatmaps(images, pixel, titles), out / "heatmaps.png")
    plots.save_figure(plots.plot_masked(masked, titles), out / "masks.png")
    arrays = {"base": occ.base, "grid": occ.grid, "images": idx, "row_spans": occ.row_spans,
              "col_spans": occ.col_spans, "units": np.asarray(occ.units or [], np.int64), "targets": targets,
              "pixel": pixel[0] if args.images is not None else occ.pixel_map(np.asarray(occ.units)[targets])}
    with jaxviz.atomic_path(out / "occlusion.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    print(json.dumps({"npz": str(out / "occlusion.npz"), "layer": layer, "images": len(idx),
                      "grid_shape": list(occ.grid.shape), "seconds": round(seconds, 3)}))


def cmd_tsne(args) -> None:
    check_writable(args.out, directory=False, option="--out")
    data, network = load(args)
    layer = args.layer or network.feature_layer
    with _naming("layer"):
        network.check_layer(layer)
    feats = jaxviz.unit_scores(model_outputs(network, data.images, layer=layer, progress="features"))
    with _naming("perplexity", "max_iter"):
        emb = jaxviz.tsne(feats, perplexity=args.perplexity, max_iter=args.max_iter, seed=args.seed,
                          subsample=args.points)
    labels = data.labels[emb.indices]
    plots.save_figure(plots.plot_tsne(emb.coords, labels, data.class_names,
                                      title=f"t-SNE of {layer} ({emb.seconds:.1f} s)"), args.out)
    knn = jaxviz.knn_agreement(emb.coords, labels, len(data.class_names), k=min(10, len(labels) - 1))
    agreement = {c: round(float(v), 3) for c, v in zip(data.class_names, knn) if not np.isnan(v)}
    print(json.dumps({"png": args.out, "seconds": round(emb.seconds, 2), "knn_agreement": agreement}))


def cmd_report(args) -> None:
    """Check the settings, the output folder and the data, in that order, before anything is written."""
    settings = settings_from(jaxviz.ReportSettings, args, REPORT_FIELDS)
    jaxviz.check_report_dir(args.out)  # creates nothing; make_report checks the settings against the data too
    data, network = load(args)
    settings = _checked(args, REPORT_FIELDS, data, network)  # make_report checks them too, naming no option
    start = time.perf_counter()
    try:
        jaxviz.make_report(args.out, network=network, dataset=data, settings=settings)
    except (ValueError, TypeError) as e:  # e.g. "network: the model's output is not finite" (its first stage)
        raise as_option(e, (), {"network": "--model"}) from None
    print(f"wrote {Path(args.out) / 'index.html'} in {time.perf_counter() - start:.1f} s")
