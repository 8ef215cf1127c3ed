"""``make_report``: every analysis of the teaching notebook in one HTML page.

Writes into ``out_dir``: ``index.html`` (self-contained: figures embedded,
each also linked to its PNG), the PNGs, and ``results.json`` with every
number.

Nothing is written before every setting has been checked, against the data
and the model too. The report is then built in a temporary sibling folder
``.<name>.tmp-<pid>-<random>`` and swapped in only when complete, so
``out_dir`` always holds either the earlier complete report (or nothing) or
the new complete one, never a mix; see ``make_report`` for the protocol.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import numbers
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import plots
from jaxviz._io import LockHeldError, atomic_write_bytes, path_lock, replace_directory
from jaxviz._progress import progress_bar
from jaxviz.data import Dataset, load_sample
from jaxviz.embedding import knn_agreement, tsne
from jaxviz.features import layer_features, top_k_images, unit_scores
from jaxviz.filters import filter_grid
from jaxviz.masks import apply_mask, heatmap_mask
from jaxviz.metrics import classification_report
from jaxviz.model import check_layer, conv_kernels, forward, layer_fn, summary_table
from jaxviz.occlusion import ANCHORS, occlude
from jaxviz.units import pick_units, similar_units, unit_selectivity
from jaxviz.weights import Weights, load_pretrained

__all__ = ["MAX_UNITS", "ReportSettings", "check_output_dir", "check_report_dir", "make_report"]

MAX_UNITS = 16  # the most units the report's per-unit figures show (one column each)

# name: (smallest, largest or None) of the int settings
_INT_RANGES = {"num_units": (1, MAX_UNITS), "k": (1, None), "window": (1, None), "stride": (1, None),
               "tsne_points": (2, None), "tsne_iter": (250, None), "activation_images": (1, None),
               "seed": (0, 2**32 - 1)}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What the report computes. Defaults follow the notebook.

    Every field is checked at construction (``TypeError`` for a wrong type,
    ints must be ints and not bools; ``ValueError`` for a value out of
    range); ``make_report`` checks the rest against the data and the model
    (``k`` <= the number of images, ``window`` <= the image size, ``units``
    and ``num_units`` within the layer's width) before writing anything.

    The per-unit figures have one column per unit, so at most ``MAX_UNITS``
    (16) units are shown: a larger ``num_units`` or more ``units`` raise
    ``ValueError`` saying so (run the report again with other units to see
    more).
    """

    layer: str = "fc1"  # the feature layer: the fully connected layer before the classifier
    units: tuple[int, ...] | None = None  # None: picked from unit selectivity; 1 to MAX_UNITS indices
    num_units: int = 6  # how many units to pick when units is None: 1 to MAX_UNITS
    k: int = 10  # top-K images per unit, >= 1
    window: int = 11  # occlusion window (pixels), >= 1
    stride: int = 4  # occlusion stride (pixels), >= 1
    anchor: str = "centered"  # occlusion window placement: "centered" or "valid"
    threshold: float = 0.5  # mask threshold in [0, 1]
    sigma: float = 2.0  # mask smoothing (pixels), >= 0
    tsne_points: int = 1000  # t-SNE subsample, >= 2
    tsne_iter: int = 1000  # t-SNE iterations, >= 250
    perplexity: float = 30.0  # t-SNE perplexity, > 0 (capped by the number of points)
    activation_images: int = 4  # images in the activation-map figures, >= 1
    seed: int = 0  # t-SNE seed, in [0, 2**32)

    def __post_init__(self):
        for name in ("layer", "anchor"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"{name}: expected a str, got {v!r} ({type(v).__name__})")
        if not self.layer:
            raise ValueError("layer: expected a layer name, got ''")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor: expected one of {', '.join(map(repr, ANCHORS))}, got {self.anchor!r}")
        for name, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, name)
            want = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
            if not _is_int(v):
                raise TypeError(f"{name}: expected {want}, got {v!r} ({type(v).__name__})")
            if v < lo or (hi is not None and v > hi):
                extra = " (the most units the figures show)" if name == "num_units" and v > hi else ""
                raise ValueError(f"{name}: expected {want}{extra}, got {v}")
            object.__setattr__(self, name, int(v))
        for name, ok, want in (("threshold", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
                               ("sigma", lambda v: v >= 0.0, "a number >= 0"),
                               ("perplexity", lambda v: v > 0.0, "a number > 0")):
            v = getattr(self, name)
            if not _is_real(v):
                raise TypeError(f"{name}: expected {want}, got {v!r} ({type(v).__name__})")
            if not (math.isfinite(v) and ok(v)):
                raise ValueError(f"{name}: expected {want}, got {v}")
            object.__setattr__(self, name, float(v))
        if self.units is not None:
            units = self.units
            want = f"None or a tuple of 1 to {MAX_UNITS} unit indices (ints >= 0)"
            if not isinstance(units, (tuple, list, range, np.ndarray)) or np.ndim(units) != 1:
                raise TypeError(f"units: expected {want}, got {units!r} ({type(units).__name__})")
            bad = [u for u in units if not _is_int(u)]
            if bad:
                raise TypeError(f"units: expected {want}, got {list(units)!r} ({bad[0]!r} is a "
                                f"{type(bad[0]).__name__})")
            if not 1 <= len(units) <= MAX_UNITS or min(units) < 0:
                more = f" (the most the figures show; got {len(units)})" if len(units) > MAX_UNITS else ""
                raise ValueError(f"units: expected {want}{more}, got {[int(u) for u in units]}")
            object.__setattr__(self, "units", tuple(int(u) for u in units))


# --------------------------------------------------------------------------- the output folder

_REPORT_FILES = ("index.html", "results.json")
_REPORT_PNG = re.compile(r"(confusion|topk|selectivity|occlusion_masks|occlusion_heatmaps|tsne|"
                         r"filters_\w+|activations_\w+)\.png")
_WRITE_LEFTOVER = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")  # atomic_path's temporary names (killed writes)


def _leftover_dirs(out: Path) -> re.Pattern:
    """Names of this report's temporary folders beside ``out``: ``.<name>.tmp-<pid>-<hex>`` / ``.old-``."""
    return re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-\d+-[0-9a-f]+")


def _not_a_report(out: Path) -> str | None:
    """None if directory ``out`` is empty or holds a jaxviz report and nothing else; else why not."""
    entries = list(os.scandir(out))
    if not entries:
        return None
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        results = None
    if not (isinstance(results, dict) and {"settings", "figures"} <= results.keys()
            and isinstance(results["figures"], list)):
        return "it is not empty and is not a jaxviz report (no jaxviz results.json)"
    figures = {f for f in results["figures"] if isinstance(f, str)}
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                     if not (e.is_file(follow_symlinks=False)
                             and (e.name in _REPORT_FILES or e.name in figures
                                  or _REPORT_PNG.fullmatch(e.name) or _WRITE_LEFTOVER.fullmatch(e.name))))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"besides a jaxviz report it holds {', '.join(map(repr, foreign[:5]))}{more}"
    return None


def _check_target(out: Path, shown: str) -> None:
    """``out`` is a directory or absent, and its nearest existing ancestor a writable directory."""
    if os.path.lexists(out) and not out.is_dir():
        what = "a broken symbolic link" if not out.exists() else "a file"
        raise NotADirectoryError(f"out_dir: expected a directory, but {shown!r} is {what}")
    ancestor = out.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"out_dir: cannot create {shown!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir: cannot write {shown!r}: the directory {str(ancestor)!r} is not writable")


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed; raise if it is a file or not writable.

    For the commands that write single files into a folder; ``make_report``
    uses ``check_report_dir``, which creates nothing.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir)
    _check_target(out, str(out_dir))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"out_dir: cannot create {str(out)!r} ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir: {str(out)!r} is not writable")
    return out


def check_report_dir(out_dir: str | os.PathLike) -> Path:
    """Check that a report can be written to ``out_dir``; create nothing.

    ``out_dir`` must be absent, an empty directory or a directory holding a
    jaxviz report and nothing else (``index.html``, ``results.json`` and the
    PNGs it lists), which the new report replaces; a directory with anything
    else is refused (``FileExistsError``) so that no unrelated folder is ever
    deleted. Its parent (or the nearest existing ancestor) must be a writable
    directory. Returns the absolute path (symbolic links resolved).
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a path (str or os.PathLike), got {type(out_dir).__name__}")
    shown = os.fsdecode(out_dir)
    if not shown:
        raise ValueError("out_dir: expected a directory path, got ''")
    out = Path(os.path.realpath(out_dir))
    if out.parent == out:
        raise ValueError(f"out_dir: expected a directory below a parent directory, got {shown!r}")
    _check_target(out, shown)
    if out.is_dir():
        why = _not_a_report(out)
        if why is not None:
            raise FileExistsError(f"out_dir: refusing to replace {shown!r}: {why}; "
                                  "choose another directory or empty it")
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"out_dir: {shown!r} is not writable")
    return out


def _restore_or_remove_leftovers(out: Path) -> None:
    """Under the lock: clean up after writers that died (SIGKILL, power loss) mid-report.

    A ``.old-`` folder while ``out`` is absent is the earlier report of a
    writer killed between its two renames: put it back. Every other
    temporary folder is an unfinished report (or an old one left to delete).
    """
    pattern = _leftover_dirs(out)
    found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    old = sorted((p for p in found if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
    if old and not os.path.lexists(out):
        os.rename(old[-1], out)
        found.remove(old[-1])
    for p in found:
        shutil.rmtree(p, ignore_errors=True)


class _Page:
    """Collects sections, figures and timings."""

    def __init__(self, out: Path):
        self.out, self.sections, self.timings, self.figures = out, [], {}, []

    def figure(self, fig, name: str, caption: str) -> str:
        path = self.out / f"{name}.png"
        plots.save_figure(fig, path)
        self.figures.append(path.name)
        data = base64.b64encode(path.read_bytes()).decode()
        return (f'<figure><a href="{path.name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f'</a><figcaption>{html.escape(caption)}</figcaption></figure>')

    def section(self, title: str, *parts: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _check_settings(s: ReportSettings, weights: Weights, dataset: Dataset) -> None:
    """The checks that need the data and the model (the rest ran in ``ReportSettings``)."""
    check_layer(weights.model, s.layer)
    if len(dataset) < 2:
        raise ValueError(f"dataset: expected at least 2 images (t-SNE needs 2 points), got {len(dataset)}")
    if s.k > len(dataset):
        raise ValueError(f"k: expected an int in [1, {len(dataset)}] (the dataset size), got {s.k}")
    size = min(dataset.images.shape[1:3])
    if s.window > size:
        raise ValueError(f"window: expected an int in [1, {size}] (the image size), got {s.window}")
    width = jax.eval_shape(lambda x: forward(weights.model, weights.variables, x, layer=s.layer),
                           jax.ShapeDtypeStruct((1, *dataset.images.shape[1:]), jnp.float32)).shape[-1]
    if s.units is not None and max(s.units) >= width:
        raise ValueError(f"units: expected indices in [0, {width}) for layer {s.layer}, got {list(s.units)}")
    if s.units is None and s.num_units > width:
        raise ValueError(f"num_units: expected an int in [1, {min(width, MAX_UNITS)}] (layer {s.layer} has "
                         f"{width} units), got {s.num_units}")


def make_report(out_dir: str | os.PathLike, *, weights: Weights | None = None, dataset: Dataset | None = None,
                settings: ReportSettings = ReportSettings(), progress: bool = True) -> dict:
    """Run every analysis and write ``out_dir/index.html``, the PNGs and ``results.json``.

    Every argument, the output folder and the settings against the data are
    checked before anything is written. ``out_dir`` must be absent, empty or
    an earlier jaxviz report (which is replaced); a folder holding anything
    else is refused, never deleted (see ``check_report_dir``).

    How the folder is written (no reader ever sees a mix of two reports):

    1. A lock: ``fcntl.flock`` on ``.<name>.lock`` beside ``out_dir``; a
       second writer fails at once with ``BlockingIOError`` naming the
       holder's pid. A killed holder's lock is released by the kernel.
       Temporary folders of writers that were killed (SIGKILL) are removed.
    2. The report is written into ``.<name>.tmp-<pid>-<random>`` beside it.
    3. Swap: if ``out_dir`` is absent, one ``os.rename``; if it holds an
       earlier report, an atomic ``renameat2(RENAME_EXCHANGE)`` on Linux,
       elsewhere two renames (old to ``.<name>.old-<pid>-<random>``, new in;
       between them ``out_dir`` is briefly absent, never mixed), then the
       old report is deleted.
    4. On any exception, KeyboardInterrupt or SystemExit the temporary
       folder is removed and ``out_dir`` keeps the earlier report; the lock
       file is removed.

    Args:
      out_dir: output directory (created, or replaced if it is a report).
      weights: the network (default: ``load_pretrained()``).
      dataset: uint8 images with labels (default: ``load_sample()``).
      settings: what to compute.
      progress: progress bars per stage.

    Returns:
      The ``results.json`` content.
    """
    if not isinstance(settings, ReportSettings):
        raise TypeError(f"settings: expected a ReportSettings, got {type(settings).__name__}")
    if weights is not None and not isinstance(weights, Weights):
        raise TypeError(f"weights: expected a Weights (e.g. from load_weights) or None, got {type(weights).__name__}")
    if dataset is not None and not isinstance(dataset, Dataset):
        raise TypeError(f"dataset: expected a Dataset or None, got {type(dataset).__name__}")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress: expected True or False, got {progress!r} ({type(progress).__name__})")
    out = check_report_dir(out_dir)
    weights = load_pretrained() if weights is None else weights
    dataset = (load_sample() if dataset is None else dataset).with_classes(weights.class_names)
    _check_settings(settings, weights, dataset)

    # Everything checked: now write.
    shown = os.fsdecode(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path_lock(out):
            check_report_dir(out_dir)  # again: the folder may have changed while the data loaded
            _restore_or_remove_leftovers(out)
            tag = f"{os.getpid()}-{secrets.token_hex(4)}"
            tmp, aside = out.with_name(f".{out.name}.tmp-{tag}"), out.with_name(f".{out.name}.old-{tag}")
            try:
                os.mkdir(tmp)
                results = _write_report(tmp, weights, dataset, settings, progress)
                replace_directory(tmp, out, aside)
            finally:  # also on KeyboardInterrupt and SystemExit (the CLI's SIGTERM)
                if os.path.lexists(aside) and not os.path.lexists(out):
                    os.rename(aside, out)  # interrupted between the two renames: the earlier report goes back
                shutil.rmtree(tmp, ignore_errors=True)  # unfinished, or the earlier report after an exchange
                shutil.rmtree(aside, ignore_errors=True)
    except LockHeldError as e:
        user_lock = Path(shown).parent / e.lock.name
        if os.path.realpath(user_lock) != str(e.lock):
            user_lock = e.lock
        raise BlockingIOError(f"out_dir: another jaxviz report is writing {shown!r} (lock file "
                              f"{str(user_lock)!r} held by pid {e.pid if e.pid is not None else 'unknown'})"
                              ) from None
    return results


def _write_report(out: Path, weights: Weights, dataset: Dataset, settings: ReportSettings, progress: bool) -> dict:
    """Every analysis, written into ``out`` (the temporary folder); ``index.html`` last."""
    model, variables, class_names = weights.model, weights.variables, tuple(dataset.class_names)
    s, page, results = settings, _Page(out), {"settings": dataclasses.asdict(settings)}
    stages = ["evaluate", "filters", "activations", "features", "top-k", "occlusion", "t-SNE"]
    bar = progress_bar(total=len(stages), desc="report", disable=not progress, unit="stage")
    clock = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        page.timings[stage] = now - clock
        clock = now
        bar.set_postfix(stage=stage)
        bar.update(1)

    page.section("Model", f"<pre>{html.escape(summary_table(model, variables))}</pre>",
                 _p(f"Weights: {weights.metadata.get('dataset', 'user weights')}; "
                    f"data: {dataset.source or 'user data'} ({len(dataset)} images)."))

    # Evaluate: which categories are easy, which are confused
    logits = layer_features(model, variables, dataset.images, layer="logits", progress=progress and "evaluate")
    report = classification_report(dataset.labels, logits, class_names)
    results["evaluation"] = report
    page.section(
        "Accuracy and confusions",
        _p(f"Accuracy {report['accuracy']:.1%} on {report['images']} images."),
        _table(["class", "accuracy"], [(c, a) for c, a in report["per_class_accuracy"].items()]),
        "<h3>Most confused pairs</h3>",
        _table(["class A", "class B", "A taken for B", "B taken for A", "share of both classes"],
               [(p["a"], p["b"], p["a_as_b"], p["b_as_a"], p["rate"]) for p in report["most_confused"]]),
        page.figure(plots.plot_confusion(np.asarray(report["confusion_matrix"]), class_names), "confusion",
                    "Confusion matrix: rows are true classes, columns predictions."))
    done("evaluate")

    convs = [n for n in model.layer_names() if n.startswith("conv")][:2]
    page.section("Filters", *(page.figure(plots.plot_filters(*filter_grid(conv_kernels(model, variables, n)),
                                                             title=f"{n} kernels"), f"filters_{n}",
                                          f"{n}: " + ("RGB kernels" if n == convs[0] else
                                                      "kernels averaged over input channels (gray)"))
                                for n in convs))
    done("filters")

    shown = np.array([np.flatnonzero(dataset.labels == c)[0] for c in np.unique(dataset.labels)]
                     )[: s.activation_images]
    act_figs = []
    for n in convs:
        maps = layer_features(model, variables, dataset.images[shown], layer=n)
        act_figs.append(page.figure(plots.plot_activation_maps(dataset.images[shown], maps, layer=n),
                                    f"activations_{n}", f"Feature maps of {n}, first 8 channels."))
    page.section("Activation maps", *act_figs)
    done("activations")

    feats = layer_features(model, variables, dataset.images, layer=s.layer, progress=progress and "features")
    scores = unit_scores(feats)
    done("features")

    top = top_k_images(scores, s.k)
    sel = unit_selectivity(top.indices, dataset.labels, len(class_names), scores=scores)
    alive = scores.max(0) > 0
    units = pick_units(sel, s.num_units, alive=alive) if s.units is None else list(s.units)
    pairs = similar_units(top.indices, scores, top=8)
    ranking = sel.ranking()
    ranking = [int(u) for u in ranking if alive[u]]
    results["units"] = {
        "layer": s.layer, "count": int(scores.shape[1]), "dead": int((~alive).sum()), "shown": units,
        "mean_selectivity": float(sel.score[alive].mean()) if alive.any() else 0.0,
        "selective_share": float((sel.score[alive] >= 0.5).mean()) if alive.any() else 0.0,
        "most_selective": [{"unit": u, "class": class_names[sel.majority_class[u]], "score": float(sel.score[u])}
                           for u in ranking[:10]],
        "least_selective": [{"unit": u, "score": float(sel.score[u]), "entropy": float(sel.entropy[u])}
                            for u in ranking[::-1][:10]],
        "similar_pairs": {key: [dataclasses.asdict(p) for p in v] for key, v in pairs.items()},
    }
    u_res = results["units"]
    grid_images = dataset.images[top.indices[:, units]]
    page.section(
        "Top-K images per unit and unit selectivity",
        _p(f"Layer {s.layer}: {u_res['count']} units, {u_res['dead']} never active on this data. "
           f"Selectivity = share of the majority class among a unit's top {s.k} images "
           f"(1.0: all one class; {1 / len(class_names):.1f}: no preference). "
           f"Mean over live units {u_res['mean_selectivity']:.2f}; "
           f"{u_res['selective_share']:.0%} of live units have a majority class of at least half."),
        page.figure(plots.plot_top_k(grid_images, units, labels=dataset.labels[top.indices[:, units]],
                                     class_names=class_names, title=f"Top {s.k} images of {s.layer} units"),
                    "topk", "Each column: the images that activate the unit most, best first."),
        page.figure(plots.plot_selectivity(sel.histogram[units], units, class_names), "selectivity",
                    "Class histogram of each shown unit's top-K images."),
        "<h3>Most selective units (units with semantic meaning?)</h3>",
        _table(["unit", "majority class", "selectivity"],
               [(d["unit"], d["class"], d["score"]) for d in u_res["most_selective"]]),
        "<h3>Least selective live units</h3>",
        _table(["unit", "selectivity", "entropy"],
               [(d["unit"], d["score"], d["entropy"]) for d in u_res["least_selective"]]),
        "<h3>Units that respond to similar things</h3>",
        _table(["unit A", "unit B", "top-K overlap (Jaccard)", "activation correlation"],
               [(p.a, p.b, p.jaccard, p.correlation) for p in pairs["overlap"] + pairs["correlated"]]))
    done("top-k")

    # Occlusion of each shown unit's top-K images, all units at once, then each image's own unit
    flat = top.indices[:, units].T.reshape(-1)  # (units * K,), unit-major
    occ = occlude(layer_fn(model, s.layer), dataset.images[flat].astype(np.float32) / 255.0,
                  params=variables, window=s.window, stride=s.stride, anchor=s.anchor, units=units)
    own = np.repeat(np.arange(len(units)), s.k)
    heat = occ.grid[np.arange(len(flat)), ..., own]  # (units*K, rows, cols)
    pixel = occ.pixel_map(own)
    masked = np.stack([apply_mask(dataset.images[i], heatmap_mask(h, dataset.images.shape[1:3],
                                                                  threshold=s.threshold, sigma=s.sigma))
                       for i, h in zip(flat, heat, strict=True)])

    def swap(a):  # (units * K, ...) -> (K, units, ...)
        return np.swapaxes(a.reshape(len(units), s.k, *a.shape[1:]), 0, 1)

    page.section(
        "Occlusion: which image parts drive each unit",
        _p(f"An {s.window}x{s.window} occluder (fill 0 = black) slides with stride {s.stride} "
           f"({occ.grid.shape[1]}x{occ.grid.shape[2]} positions, {s.anchor} anchoring) over each top image; "
           "the heatmap is the unit's activation minus its activation with the region hidden."),
        page.figure(plots.plot_masked(swap(masked), units), "occlusion_masks",
                    f"Masked images (threshold {s.threshold}, smoothing sigma {s.sigma})."),
        page.figure(plots.plot_heatmaps(swap(dataset.images[flat]), swap(pixel), units), "occlusion_heatmaps",
                    "Per-pixel occlusion effect (mean over the windows covering each pixel)."))
    results["occlusion"] = {"positions": list(occ.grid.shape[1:3]), "images": int(len(flat))}
    done("occlusion")

    emb = tsne(scores, perplexity=min(s.perplexity, (min(s.tsne_points, len(dataset)) - 1) / 3),
               max_iter=s.tsne_iter, seed=s.seed, subsample=s.tsne_points)
    emb_labels = dataset.labels[emb.indices]
    knn = knn_agreement(emb.coords, emb_labels, len(class_names), k=min(10, len(emb.indices) - 1))
    results["tsne"] = {**emb.settings, "seconds": emb.seconds,
                       "knn_agreement": {c: (None if np.isnan(v) else float(v)) for c, v in zip(class_names, knn, strict=True)}}
    page.section(
        "t-SNE of the features",
        _p(f"{emb.settings['points']} points, perplexity {emb.settings['perplexity']:.1f}, "
           f"{s.tsne_iter} iterations, PCA init, seed {s.seed}: {emb.seconds:.1f} s."),
        page.figure(plots.plot_tsne(emb.coords, emb_labels, class_names), "tsne", f"t-SNE of {s.layer} features."),
        "<h3>How well does each class cluster? (share of 10 nearest t-SNE neighbours of the same class)</h3>",
        _table(["class", "kNN agreement", "accuracy"],
               [(c, results["tsne"]["knn_agreement"][c] if results["tsne"]["knn_agreement"][c] is not None
                 else "n/a", report["per_class_accuracy"][c]) for c in class_names]))
    done("t-SNE")
    bar.close()

    page.sections.insert(1, _answers(report, u_res, results["tsne"]["knn_agreement"]))
    results["timings_seconds"] = page.timings
    results["figures"] = page.figures
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(out / "index.html", _html(page, s).encode())
    return results


def _answers(report: dict, units: dict, knn: dict) -> str:
    pairs = ", ".join(f"{p['a']} / {p['b']} ({p['count']})" for p in report["most_confused"][:3])
    clustered = sorted((v, c) for c, v in knn.items() if v is not None)
    semantic = ", ".join(f"unit {d['unit']} ({d['class']}, {d['score']:.0%})" for d in units["most_selective"][:4])
    similar = units["similar_pairs"]["overlap"][:2]
    items = [
        ("What categories are easier? Which are confusing?",
         f"Easiest: {', '.join(report['easiest'])}; hardest: {', '.join(report['hardest'])}. "
         f"Most confused pairs: {pairs or 'none'}."
         + (f" In t-SNE space {clustered[-1][1]} clusters best and {clustered[0][1]} worst." if clustered else "")),
        ("Do all units respond to distinguishable concepts?",
         f"{units['selective_share']:.0%} of the {units['count'] - units['dead']} live units have one class "
         f"making up at least half of their top images; {units['dead']} units never fire on this data."),
        ("Are there units that respond to similar things?",
         "; ".join(f"units {p['a']} and {p['b']} share {p['jaccard']:.0%} of their top images "
                   f"(activation correlation {p['correlation']:.2f})" for p in similar) or "No overlapping pairs."),
        ("Did you find units with semantic meaning?", f"The most class-selective: {semantic}."),
    ]
    body = "".join(f"<dt>{html.escape(q)}</dt><dd>{html.escape(a)}</dd>" for q, a in items)
    return f"<section><h2>Answers to the notebook's questions</h2><dl>{body}</dl></section>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}section{margin:2em 0;border-top:1px solid #ddd}figure{margin:1em 0}
img{max-width:100%}figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
dt{font-weight:600;margin-top:.6em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}"""


def _html(page: _Page, settings: ReportSettings) -> str:
    settings_rows = [(k, v) for k, v in dataclasses.asdict(settings).items()]
    timing_rows = [(k, f"{v:.1f} s") for k, v in page.timings.items()]
    timing_rows.append(("total", f"{sum(page.timings.values()):.1f} s"))
    run = _table(["setting", "value"], settings_rows) + _table(["stage", "time"], timing_rows)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>jaxviz report</title>"
            f"<style>{_CSS}</style></head><body><h1>What did this CNN learn?</h1>"
            f"<p>A jaxviz report: {time.strftime('%Y-%m-%d %H:%M')}. "
            f"<a href='results.json'>All numbers as JSON</a>.</p>"
            + "".join(page.sections) + f"<section><h2>Run settings and timings</h2>{run}</section></body></html>")
