"""Rendering ``ReportResults``: the PNGs, ``results.json`` and one self-contained ``index.html``.

Every figure is written as a PNG (atomically) and embedded in the page; the
JSON holds every number shown. ``index.html`` is written last.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz._io import atomic_write_bytes
from jaxviz.analysis.filters import filter_grid
from jaxviz.analysis.units import class_selectivity
from jaxviz.evaluation.sanity import PASS_THRESHOLD
from jaxviz.methods import registry
from jaxviz.report import plots
from jaxviz.report.analyses import ReportResults

__all__ = ["jsonable", "render"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses and dicts as objects, arrays and tuples as lists,
    numpy scalars as numbers, NaN as ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and value != value:
        return None
    return value


class _Page:
    """Collects sections and figures."""

    def __init__(self, out: Path):
        self.out, self.sections, self.figures = out, [], []

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
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.3f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _unit_numbers(r: ReportResults) -> dict:
    """The unit study's numbers for the page and the JSON."""
    st, names = r.study, r.dataset.class_names
    sel, alive = st.selectivity, st.alive
    index = None
    if int((np.bincount(r.dataset.labels, minlength=len(names)) > 0).sum()) >= 2:
        # Morcos et al.'s index over the whole data: the top-K majority share saturates (many units at 100%)
        index = class_selectivity(st.scores, r.dataset.labels, len(names))
    ranking = [int(u) for u in (sel.ranking() if index is None else index.ranking()) if alive[u]]

    def selective(u: int) -> dict:
        return {"unit": u, "class": names[sel.majority_class[u]], "score": float(sel.score[u]),
                "index": None if index is None else float(index.index[u]),
                "preferred": None if index is None else names[index.preferred_class[u]]}

    return {
        "layer": r.layer, "count": int(st.scores.shape[1]), "dead": int((~alive).sum()), "shown": list(st.units),
        "mean_selectivity": float(sel.score[alive].mean()) if alive.any() else 0.0,
        "selective_share": float((sel.score[alive] >= 0.5).mean()) if alive.any() else 0.0,
        "most_selective": [selective(u) for u in ranking[:10]],
        "least_selective": [{**selective(u), "entropy": float(sel.entropy[u])} for u in ranking[::-1][:10]],
        "similar_pairs": jsonable(r.similar),
    }


def _model_section(page: _Page, r: ReportResults) -> None:
    page.section("Model", f"<pre>{html.escape(r.network.summary_table())}</pre>",
                 _p(f"Network: {r.network.name or 'user model'}, input {'x'.join(map(str, r.network.input_spec.shape))}; "
                    f"data: {r.dataset.source or 'user data'} ({len(r.dataset)} images)."))


def _evaluation_section(page: _Page, r: ReportResults) -> None:
    ev = r.evaluation
    if ev is None:
        page.section("Accuracy and confusions", _p("The network has no class names: not evaluated as a classifier."))
        return
    page.section(
        "Accuracy and confusions",
        _p(f"Accuracy {ev.accuracy:.1%} on {ev.images} images."),
        _table(["class", "accuracy"], list(ev.per_class_accuracy.items())),
        "<h3>Most confused pairs</h3>",
        _table(["class A", "class B", "A taken for B", "B taken for A", "share of both classes"],
               [(p.a, p.b, p.a_as_b, p.b_as_a, p.rate) for p in ev.most_confused]),
        page.figure(plots.plot_confusion(ev.confusion_matrix, ev.class_names), "confusion",
                    "Confusion matrix: rows are true classes, columns predictions."))


def _filter_sections(page: _Page, r: ReportResults) -> None:
    safe = {n: n.replace("/", "_") for n in r.kernels}
    filters = [page.figure(plots.plot_filters(*filter_grid(k), title=f"{n} kernels"), f"filters_{safe[n]}",
                           f"{n}: " + ("RGB kernels" if k.shape[2] == 3 else "kernels averaged over input channels"))
               for n, k in r.kernels.items()]
    page.section("Filters", *filters or [_p("The network has no conv kernels.")])
    images = r.dataset.images[r.activation_images]
    maps = [page.figure(plots.plot_activation_maps(images, maps, layer=n), f"activations_{safe[n]}",
                        f"Feature maps of {n}, first 8 channels.")
            for n, maps in r.activations.items()]
    page.section("Activation maps", *maps or [_p("No conv layers.")])


def _units_section(page: _Page, r: ReportResults, u: dict) -> None:
    st, s, names = r.study, r.settings, r.dataset.class_names
    cols = list(st.units)
    page.section(
        "Top-K images per unit and unit selectivity",
        _p(f"Layer {r.layer}: {u['count']} units, {u['dead']} never active on this data. "
           f"Selectivity = share of the majority class among a unit's top {s.k} images "
           f"(1.0: all one class; {1 / len(names):.2f}: no preference). "
           f"Mean over live units {u['mean_selectivity']:.2f}; "
           f"{u['selective_share']:.0%} of live units have a majority class of at least half."),
        page.figure(plots.plot_top_k(r.occlusion.images, cols, labels=r.dataset.labels[st.top.indices[:, cols]],
                                     class_names=names, title=f"Top {s.k} images of {r.layer} units"),
                    "topk", "Each column: the images that activate the unit most, best first."),
        page.figure(plots.plot_selectivity(st.selectivity.histogram[cols], cols, names), "selectivity",
                    "Class histogram of each shown unit's top-K images."),
        "<h3>Most selective units (units with semantic meaning?)</h3>",
        _p("Ranked by the class selectivity index (Morcos et al., 2018): (mean of the preferred class - mean of the "
           "other classes) / their sum, over every image; it does not saturate as the top-K majority share does."),
        _table(["unit", "preferred class", "selectivity index", f"majority class of the top {s.k}", "its share"],
               [(d["unit"], d["preferred"] or "n/a", "n/a" if d["index"] is None else d["index"], d["class"],
                 d["score"]) for d in u["most_selective"]]),
        "<h3>Least selective live units</h3>",
        _table(["unit", "selectivity index", "majority share", "entropy"],
               [(d["unit"], "n/a" if d["index"] is None else d["index"], d["score"], d["entropy"])
                for d in u["least_selective"]]),
        _p(f"Every unit of {r.layer}, browsable with its pictures, top images of the whole data, occlusion and "
           f"similar units: jaxviz atlas --layers {r.layer} --out atlas (with this report's model and data options)."),
        "<h3>Units that respond to similar things</h3>",
        _table(["unit A", "unit B", "top-K overlap (Jaccard)", "activation correlation"],
               [(p.a, p.b, p.jaccard, p.correlation) for p in r.similar.pairs]))
    occ, grid = r.occlusion, r.occlusion.occlusion.grid
    page.section(
        "Occlusion: which image parts drive each unit",
        _p(f"An {s.window}x{s.window} occluder (fill 0 in model input) slides with stride {s.stride} "
           f"({grid.shape[1]}x{grid.shape[2]} positions, {s.anchor} anchoring) over each top image; "
           "the heatmap is the unit's activation minus its activation with the region hidden."),
        page.figure(plots.plot_masked(occ.masked, cols), "occlusion_masks",
                    f"Masked images (threshold {s.threshold}, smoothing sigma {s.sigma})."),
        page.figure(plots.plot_heatmaps(occ.images, occ.pixel, cols), "occlusion_heatmaps",
                    "Per-pixel occlusion effect (mean over the windows covering each pixel)."))


def _looks_for(r: ReportResults) -> dict | None:
    """The feature visualizations' honesty numbers for the page and the JSON."""
    v = r.looks_for
    if v is None:
        return None
    names, classes = r.dataset.class_names, r.network.class_names if r.network.is_classifier else None
    return {"units": list(v.units), "dead": list(v.dead), "steps": v.visualization.settings["steps"],
            "exemplar_ratio": [float(x) for x in v.exemplar_ratio],
            "predicted_class": None if v.predicted_class is None else [classes[int(p[0])] for p in v.predicted_class],
            "majority_class": [names[int(c)] for c in v.majority_class],
            "majority_share": [float(x) for x in v.majority_share], "settings": v.visualization.settings}


def _looks_for_section(page: _Page, r: ReportResults, looks: dict | None) -> None:
    title = "What each shown unit looks for"
    if looks is None:
        why = "vis_steps is 0" if r.settings.vis_steps == 0 else "every shown unit is dead on this data"
        page.section(title, _p(f"Not run: {why}."))
        return
    v, k = r.looks_for, r.settings.k
    columns = [list(r.study.units).index(u) for u in v.units]  # the drawn units among the shown ones
    predicted = looks["predicted_class"] or ["n/a"] * len(v.units)
    rows = [(u, ratio, p, f"{m} ({share:.0%})") for u, ratio, p, m, share in
            zip(v.units, looks["exemplar_ratio"], predicted, looks["majority_class"], looks["majority_share"])]
    dead = (f" Not drawn, dead on this data (never above 0): units {', '.join(map(str, v.dead))}." if v.dead else "")
    page.section(
        title,
        _p(f"For each shown unit of {r.layer}, an image optimized to maximize it ({looks['steps']} Adam steps on a "
           "decorrelated Fourier parameterization, random jitter, scale and rotation; jaxviz.visualize, all units "
           "in one compiled program). Pictures like these can mislead, so each comes with two checks against the "
           f"data: the exemplar ratio (the activation the picture reaches over the unit's largest on the "
           f"{len(r.dataset)} images; above 1, it excites the unit more than any of them) and the class the network "
           f"predicts for the picture, beside the majority class of the unit's top {k} images.{dead}"),
        page.figure(plots.plot_looks_for(v.visualization.images[:, 0], r.occlusion.images[:, columns], list(v.units),
                                         notes=v.notes(r.network.class_names if r.network.is_classifier else None),
                                         labels=r.dataset.labels[r.study.top.indices[:, list(v.units)]],
                                         class_names=r.dataset.class_names, title=f"What {r.layer} units look for"),
                    "visualizations", f"Each column: the unit's picture (under it the exemplar ratio and the class "
                                      f"predicted for it), then its top {k} images of the data."),
        _table(["unit", "exemplar ratio", "predicted class of the picture", f"majority class of the top {k}"], rows))


def _trust_section(page: _Page, r: ReportResults) -> None:
    t, s = r.trust, r.settings
    names = r.network.class_names if r.network.is_classifier and t.layer == r.network.output_layer else None
    what = (f"the predicted class's probability (softmax of {t.layer})" if names is not None
            else f"unit {int(t.targets[0])} of {t.layer}")
    true = [r.dataset.class_names[r.dataset.labels[i]] for i in r.trust_images]
    rows = [plots.image_title(true=label, predicted=names[int(c)], sep="\n") if names is not None else
            plots.image_title(true=label, explained=f"unit {int(c)}", sep="\n") for label, c in zip(true, t.targets)]
    means = t.means()
    page.section(
        "Which map to trust?",
        _p(f"Each method explains {what} for {len(t.targets)} images: {_methods_text(s, t.maps)}. Faithfulness: "
           "deletion AUC (pixels removed in the map's order; lower is better), insertion AUC (pixels revealed; "
           "higher is better) and MuFidelity (correlation of map sums with output drops over random cell "
           "subsets; higher is better)."),
        page.figure(plots.plot_attribution_maps(r.dataset.images[r.trust_images], t.maps, titles=rows), "trust",
                    "Attribution maps by method, row label the true class and the explained output (each map centred on its median and "
                    "scaled by its largest deviation; red supports the output more than the typical pixel)."),
        _table(["method", "deletion AUC (lower better)", "insertion AUC (higher better)", "MuFidelity (higher better)"],
               [(m, v["deletion_auc"], v["insertion_auc"], v["mu_fidelity"]) for m, v in means.items()]),
        _p(t.sentence()))


def _methods_text(s, shown) -> str:
    """Each compared method in a few words (``Method.describe``), with the options the report gave it."""
    given = {"window": s.window, "stride": s.stride, "num_masks": s.rise_masks, "seed": s.seed}
    described = [m.describe(m.options_for(given)) for m in registry.METHODS.values() if m.label in shown]
    return ", ".join(described)


def _sanity_section(page: _Page, r: ReportResults) -> None:
    c = r.sanity
    if c is None:
        why = ("sanity_methods is empty" if r.settings.sanity_methods == () else
               "the network has no layer with its own variables to randomize")
        page.section("Sanity check: do the maps depend on the weights?", _p(f"Not run: {why}."))
        return
    labels = {m: registry.METHODS[m].label for m in c.methods}
    page.section(
        "Sanity check: do the maps depend on the weights?",
        _p(f"Adebayo et al.'s model-randomization test on {len(r.sanity_images)} images: the layers are "
           f"re-initialised from the top down ({', '.join(c.layers)}; {'the model’s own initializers' if c.initializer == 'model' else 'scale-matched Gaussian draws'}"
           f", seed {r.settings.seed}) and each gradient method's map of the trained model's predicted output is "
           "compared with its map on the randomized model (Spearman rank correlation of the absolute maps). "
           "A map that stays the same when the model is destroyed explains the image, not the model."),
        page.figure(plots.plot_sanity(c.layers, {labels[m]: v for m, v in c.mean().items()}, mode=c.mode,
                                      threshold=PASS_THRESHOLD), "sanity",
                    "Mean Spearman correlation with the trained model's map as more layers are randomized."),
        _p(c.sentence()))


def _tsne_section(page: _Page, r: ReportResults, knn: dict) -> None:
    emb, s, names = r.embedding, r.settings, r.dataset.class_names
    accuracy = r.evaluation.per_class_accuracy if r.evaluation is not None else {}
    page.section(
        "t-SNE of the features",
        _p(f"{emb.settings['points']} points, perplexity {emb.settings['perplexity']:.1f}, "
           f"{s.tsne_iter} iterations, PCA init, seed {s.seed}: {emb.seconds:.1f} s."),
        page.figure(plots.plot_tsne(emb.coords, r.dataset.labels[emb.indices], names), "tsne",
                    f"t-SNE of {r.layer} features."),
        "<h3>How well does each class cluster? (share of 10 nearest t-SNE neighbours of the same class)</h3>",
        _table(["class", "kNN agreement", "accuracy"],
               [(c, knn[c] if knn[c] is not None else "n/a", accuracy.get(c, "n/a")) for c in names]))


def _layers_section(page: _Page, r: ReportResults) -> None:
    title = "How the layers relate"
    c = r.layers
    if c is None:
        page.section(title, _p("Not run: " + ("cka_batch is 0." if not r.settings.cka_batch else
                                              "CKA's minibatches need at least 4 images.")))
        return
    steps = [(c.matrix[i, i + 1], c.layers[i], c.layers[i + 1]) for i in range(len(c.layers) - 1)
             if np.isfinite(c.matrix[i, i + 1])]
    change = min(steps) if steps else None
    page.section(
        title,
        _p(f"Linear CKA (Kornblith et al. 2019) between every pair of the {len(c.layers)} layers"
           f"{'' if len(c.layers) == len(r.network.layer_names) else ' (the top-level ones)'} over the "
           f"{c.images} images, in {c.batches} minibatches of at most {c.batch_size} drawn in a seeded random order, "
           "each adding its unbiased HSIC (Nguyen et al. 2021): one pass over the data for every pair. 1 means the same "
           "representation up to a rotation and a scale; near 0, unrelated ones."),
        page.figure(plots.plot_cka(c.matrix, c.layers, c.other_layers), "cka", "Linear CKA between the layers."),
        _p("" if change is None else f"The representation changes most between {change[1]} and {change[2]} "
                                     f"(CKA {change[0]:.2f} between these neighbours)."))


def _concepts_section(page: _Page, r: ReportResults) -> None:
    title = "Which concepts matter for which class"
    t = r.concepts
    if t is None:
        why = ("tcav_runs is 0" if not r.settings.tcav_runs else "the network is no classifier with a gradient at "
               "its layers")
        page.section(title, _p(f"Not run: {why}."))
        return
    found = sorted(((abs(t.scores[i, j, k] - 0.5), t.concepts[i], t.targets[j], t.layers[k], t.scores[i, j, k],
                     t.p_values[i, j, k]) for i, j, k in zip(*np.nonzero(t.significant))), reverse=True)
    page.section(
        title,
        _p(f"TCAV (Kim et al. 2018) of the built-in procedural concepts ({', '.join(t.concepts)}; "
           f"{t.set_size} images each) at {', '.join(t.layers)}, for every class's first {int(t.images_per_target.max())}"
           f" images. A concept's activation vector (CAV) is found against {t.runs} random sets of the data (here "
           "FastCAV's difference of the mean activations: `jaxviz tcav` also fits the paper's linear classifiers); "
           "the score is the share of a class's images whose logit rises along it. Each score is tested against "
           f"{t.runs} random-vs-random CAVs (two-sided t-test, Bonferroni over the {t.p_values.size} tests, "
           f"alpha {t.alpha:g}): an insignificant one is shown as n.s., not as a score."),
        page.figure(plots.plot_tcav(t), "tcav", "TCAV scores; n.s.: not significant."),
        _p(f"{len(found)} of the {t.p_values.size} (concept, class, layer) results are significant."),
        _table(["concept", "class", "layer", "TCAV score", "p"],
               [(c, k, layer, f"{v:.2f}", f"{pv:.1e}") for _, c, k, layer, v, pv in found[:12]]) if found else "")


def _answers(r: ReportResults, units: dict, knn: dict) -> str:
    ev = r.evaluation
    clustered = sorted((v, c) for c, v in knn.items() if v is not None)
    semantic = ", ".join(f"unit {d['unit']} ({d['preferred'] or d['class']}"
                         + ("" if d["index"] is None else f", index {d['index']:.2f}")
                         + f", {d['score']:.0%} of its top images {d['class']})" for d in units["most_selective"][:4])
    similar = r.similar.overlap[:2]
    if ev is not None:
        pairs = ", ".join(f"{p.a} / {p.b} ({p.count})" for p in ev.most_confused[:3])
        easy = (f"Easiest: {', '.join(ev.easiest)}; hardest: {', '.join(ev.hardest)}. "
                f"Most confused pairs: {pairs or 'none'}.")
    else:
        easy = "Not a classifier (no class names), so no accuracy."
    items = [
        ("What categories are easier? Which are confusing?",
         easy + (f" In t-SNE space {clustered[-1][1]} clusters best and {clustered[0][1]} worst." if clustered else "")),
        ("Do all units respond to distinguishable concepts?",
         f"{units['selective_share']:.0%} of the {units['count'] - units['dead']} live units have one class "
         f"making up at least half of their top images; {units['dead']} units never fire on this data."),
        ("Are there units that respond to similar things?",
         "; ".join(f"units {p.a} and {p.b} share {p.jaccard:.0%} of their top images "
                   f"(activation correlation {p.correlation:.2f})" for p in similar) or "No overlapping pairs."),
        ("Did you find units with semantic meaning?", f"The most class-selective: {semantic or 'none'}."),
    ]
    body = "".join(f"<dt>{html.escape(q)}</dt><dd>{html.escape(a)}</dd>" for q, a in items)
    return f"<section><h2>Answers to the notebook's questions</h2><dl>{body}</dl></section>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}section{margin:2em 0;border-top:1px solid #ddd}figure{margin:1em 0}
img{max-width:100%}figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
dt{font-weight:600;margin-top:.6em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}"""


def render(r: ReportResults, out: Path) -> dict:
    """Write the PNGs, ``results.json`` and ``index.html`` (last) into ``out``; return the JSON content."""
    page = _Page(out)
    knn = {c: (None if np.isnan(v) else float(v)) for c, v in zip(r.dataset.class_names, r.knn)}
    units = _unit_numbers(r)
    _model_section(page, r)
    _evaluation_section(page, r)
    _filter_sections(page, r)
    _units_section(page, r, units)
    looks = _looks_for(r)
    _looks_for_section(page, r, looks)
    _trust_section(page, r)
    _sanity_section(page, r)
    _tsne_section(page, r, knn)
    _layers_section(page, r)
    _concepts_section(page, r)
    page.sections.insert(1, _answers(r, units, knn))
    settings = {**dataclasses.asdict(r.settings), "layer": r.layer}
    results = {
        "settings": settings,
        "network": {"name": r.network.name, "input_shape": list(r.network.input_spec.shape),
                    "layers": list(r.network.layer_names)},
        "evaluation": jsonable(r.evaluation),
        "units": units,
        "occlusion": {"positions": list(r.occlusion.occlusion.grid.shape[1:3]),
                      "images": int(r.occlusion.occlusion.grid.shape[0])},
        "looks_for": looks,
        "trust": {"images": r.trust_images.tolist(), "layer": r.trust.layer, "targets": r.trust.targets.tolist(),
                  "means": r.trust.means(), "ranking": r.trust.ranking(), "sentence": r.trust.sentence(),
                  "per_image": jsonable(r.trust.scores)},
        "sanity": None if r.sanity is None else {
            "images": r.sanity_images.tolist(), "mode": r.sanity.mode, "layers": list(r.sanity.layers),
            "initializer": r.sanity.initializer, "targets": r.sanity.targets.tolist(),
            "mean": jsonable({m: np.where(np.isnan(v), None, v).tolist() for m, v in r.sanity.mean().items()}),
            "final": jsonable(r.sanity.final()), "passes": r.sanity.passes(), "sentence": r.sanity.sentence()},
        "tsne": {**r.embedding.settings, "seconds": r.embedding.seconds, "knn_agreement": knn},
        "cka": None if r.layers is None else r.layers.to_json(),
        "tcav": None if r.concepts is None else r.concepts.to_json(),
        "timings_seconds": dict(r.timings),
        "figures": page.figures,
    }
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())
    timing_rows = [(k, f"{v:.1f} s") for k, v in r.timings.items()] + [("total", f"{sum(r.timings.values()):.1f} s")]
    run = _table(["setting", "value"], list(settings.items())) + _table(["stage", "time"], timing_rows)
    title = f"What did {r.network.name or 'this network'} learn?"
    atomic_write_bytes(out / "index.html", (
        f"<!doctype html><html><head><meta charset='utf-8'><title>jaxviz report</title>"
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        f"<p>A jaxviz report: {time.strftime('%Y-%m-%d %H:%M')}. <a href='results.json'>All numbers as JSON</a>.</p>"
        + "".join(page.sections) + f"<section><h2>Run settings and timings</h2>{run}</section></body></html>"
    ).encode())
    return results
