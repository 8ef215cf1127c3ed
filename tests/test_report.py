"""``make_report`` on a tiny model and tiny data: a complete page, only existing files, no half-written output,
settings checked before anything is written, and a folder that always holds one whole report."""

import dataclasses
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz._io import path_lock
from jaxviz.analysis.embedding import Embedding
from jaxviz.cli import main
from jaxviz.data import Dataset
from jaxviz.models.weights import Weights
from jaxviz.report import analyses, folder
from jaxviz.report import settings as settings_module

from conftest import make_uint8_images

# most tests run three of the comparison's methods (one per engine, and Grad-CAM); the default (every method)
# runs in the tests of the user models; feature visualization runs in the module's report and the user models'
SETTINGS = jaxviz.ReportSettings(k=3, num_units=3, window=11, stride=8, tsne_points=40, tsne_iter=300,
                                 trust_methods=("occlusion", "saliency", "gradcam"), sanity_methods=("saliency", "gradcam"),
                                 vis_steps=0, cka_batch=0, tcav_runs=0)


@pytest.fixture(scope="module")
def small(tiny_model):
    """A 4-class tiny CNN and 40 random images."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    data = Dataset(images, np.arange(40) % 4, ("w", "x", "y", "z"), source="test images")
    model = tiny_model.clone(num_classes=4)
    weights = Weights(model, jaxviz.init_variables(model, jax.random.key(1)), data.class_names, {"dataset": "tiny"})
    return weights, data


@pytest.fixture
def fast_tsne(monkeypatch):
    """Replace scikit-learn's t-SNE (most of a tiny report's time) where only the folder handling is tested."""
    def fake(features, *, perplexity, max_iter, seed, subsample):
        idx = np.arange(min(subsample, len(features)))
        coords = np.asarray(features, np.float32).reshape(len(features), -1)[idx, :2]
        return Embedding(coords, idx, 0.0, {"perplexity": perplexity, "max_iter": max_iter, "seed": seed,
                                            "init": "pca", "points": len(idx)})

    monkeypatch.setattr(analyses, "tsne", fake)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a report folder, name -> bytes (reports have no subfolders)."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def leftovers(folder: Path) -> list[str]:
    """Temporary folders and lock files of ``folder`` beside it (``.<name>.*``)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def earlier_report(report, where: Path) -> tuple[Path, dict]:
    """A copy of the complete module report at ``where`` and its snapshot."""
    shutil.copytree(report[0], where)
    return where, snapshot(where)


@pytest.fixture(scope="module")
def report(small, tmp_path_factory):
    weights, data = small
    out = tmp_path_factory.mktemp("report")
    settings = dataclasses.replace(SETTINGS, vis_steps=4, cka_batch=16, tcav_runs=3)
    results = jaxviz.make_report(out, network=weights.network, dataset=data, settings=settings, progress=False)
    return out, results, weights, data


SECTIONS = ("Model", "Answers to the notebook", "Accuracy and confusions", "Filters", "Activation maps",
            "Top-K images per unit", "Occlusion", "What each shown unit looks for", "Which map to trust?", "Sanity check: do the maps depend on the weights?",
            "t-SNE", "How the layers relate", "Which concepts matter for which class", "Run settings and timings")
STAGES = {"evaluate", "filters", "activations", "features", "top-k", "occlusion", "visualization", "trust", "sanity",
          "t-SNE", "CKA", "TCAV"}


def check_complete(out: Path, results: dict, min_files: int = 10) -> tuple[str, dict]:
    """A whole report in ``out``: every section, every referenced file there, only its own files, the JSON returned
    is the one written. Returns the page and the saved JSON."""
    page = (out / "index.html").read_text()
    refs = re.findall(r'(?:href|src)="([^"]+)"', page) + re.findall(r"(?:href|src)='([^']+)'", page)
    files = [r for r in refs if not r.startswith("data:")]
    assert "results.json" in files and len(files) >= min_files
    for ref in files:
        assert (out / ref).is_file(), ref
    assert page.count("data:image/png;base64,") == len(results["figures"])
    for heading in SECTIONS:
        assert f"<h2>{heading}" in page, heading
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results)) and set(saved["timings_seconds"]) == STAGES
    assert sorted(p.name for p in out.glob("*.png")) == sorted(saved["figures"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html", "results.json", *saved["figures"]])
    assert leftovers(out) == []
    return page, saved


def test_index_references_only_existing_files(report):
    out, results, _, _ = report
    check_complete(out, results)


def test_report_has_every_analysis_and_the_answers(report):
    out, results, _, data = report
    _, saved = check_complete(out, results)
    assert saved["evaluation"]["images"] == len(data)
    assert len(saved["units"]["shown"]) == 3
    assert saved["settings"]["layer"] == "fc1"  # layer None: the network's feature layer
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_the_layers_and_concepts_sections_equal_cka_and_tcav(report):
    """The numbers of "How the layers relate" and "Which concepts matter" are ``jaxviz.cka``'s and
    ``jaxviz.tcav``'s with the same arguments (the built-in concepts, every class's first images)."""
    out, results, weights, data = report
    net = weights.network
    want = jaxviz.cka(net, data.images, batch_size=16, seed=0)
    np.testing.assert_allclose(np.array(results["cka"]["matrix"], float), want.matrix, atol=1e-12)
    assert results["cka"]["layers"] == list(net.layer_names) and "cka.png" in results["figures"]
    classes = np.unique(data.labels)
    scored = np.concatenate([np.flatnonzero(data.labels == c)[:analyses.TCAV_IMAGES] for c in classes])
    concepts = jaxviz.tcav(net, None, [int(c) for c in classes], ["pool2", "fc1"], images=data.images[scored],
                           labels=data.labels[scored], random_images=data.images, runs=3, cav="mean_difference",
                           seed=0)
    assert results["tcav"]["layers"] == ["pool2", "fc1"] and results["tcav"]["targets"] == list(data.class_names)
    assert results["tcav"]["cav"] == "mean_difference"
    assert results["tcav"]["significant"] == concepts.significant.tolist()
    np.testing.assert_allclose(results["tcav"]["p_values"], concepts.p_values)
    page = (out / "index.html").read_text()
    assert "tcav.png" in results["figures"] and f"{int(concepts.significant.sum())} of the " \
        f"{concepts.p_values.size} (concept, class, layer) results are significant" in page


def test_similar_units_table_lists_each_pair_once(report):
    out, results, _, _ = report
    page = (out / "index.html").read_text()
    table = page.split("<h3>Units that respond to similar things</h3>", 1)[1].split("</table>", 1)[0]
    rows = [tuple(int(c) for c in re.findall(r"<td>([^<]*)</td>", row)[:2]) for row in re.findall(r"<tr>(.*?)</tr>", table)
            if "<td>" in row]
    keys = [frozenset(r) for r in rows]
    assert len(keys) == len(set(keys))
    similar = results["units"]["similar_pairs"]
    assert set(keys) == {frozenset((p["a"], p["b"])) for p in similar["overlap"] + similar["correlated"]}


def test_most_selective_units_are_ranked_by_the_class_selectivity_index(report):
    """Morcos et al.'s index from a numpy loop over the class means of every image; the top-K majority share (which
    saturates at 100% for many units) stands beside it; the page points to the atlas."""
    out, results, weights, data = report
    scores = np.asarray(jaxviz.layer_features(weights.network, data.images, layer="fc1"), np.float64)
    classes = len(data.class_names)
    live = [u for u in range(scores.shape[1]) if scores[:, u].max() > 0]
    index, preferred = {}, {}
    for u in live:
        means = np.array([scores[data.labels == c, u].mean() for c in range(classes)])
        best = int(np.argmax(means))
        rest = (means.sum() - means[best]) / (classes - 1)
        index[u], preferred[u] = (means[best] - rest) / (means[best] + rest), (best, means[best])
    want = sorted(live, key=lambda u: (-index[u], -preferred[u][1], u))[:10]
    most = results["units"]["most_selective"]
    assert [d["unit"] for d in most] == want
    for d in most:
        assert d["index"] == pytest.approx(index[d["unit"]], abs=1e-5)
        assert d["preferred"] == data.class_names[preferred[d["unit"]][0]]
    page = (out / "index.html").read_text()
    assert "selectivity index" in page and "jaxviz atlas --layers fc1 --out atlas" in page


def test_what_each_unit_looks_for_equals_visualize_and_the_top_k(report):
    """The section's numbers, from independent computations: the pictures are visualize's (the same program), the
    exemplar ratio its activation over the unit's largest score on the data (numpy), the predicted class the
    argmax of the logits of the pictures, the majority class a bincount of the top-K labels."""
    out, results, weights, data = report
    net, looks = weights.network, results["looks_for"]
    shown = results["units"]["shown"]
    scores = np.asarray(jaxviz.layer_features(net, data.images, layer="fc1"))
    assert sorted(looks["units"] + looks["dead"]) == sorted(shown)
    assert looks["dead"] == [u for u in shown if scores[:, u].max() <= 0] and looks["steps"] == 4
    vis = jaxviz.visualize(net, "fc1", looks["units"], steps=4, seed=SETTINGS.seed)
    np.testing.assert_allclose(looks["exemplar_ratio"], vis.activation[:, 0] / scores[:, looks["units"]].max(0),
                               rtol=1e-5)
    predicted = np.asarray(jaxviz.layer_features(net, vis.images[:, 0])).argmax(-1)
    assert looks["predicted_class"] == [net.class_names[c] for c in predicted]
    order = np.argsort(-scores, axis=0, kind="stable")[:SETTINGS.k]  # ties to the lower index, as top_k
    majority = [np.bincount(data.labels[order[:, u]], minlength=4).argmax() for u in looks["units"]]
    assert looks["majority_class"] == [data.class_names[c] for c in majority]
    page = (out / "index.html").read_text().split("<h2>What each shown unit looks for", 1)[1].split("</section>")[0]
    assert "visualizations.png" in results["figures"] and "exemplar ratio" in page
    for u, ratio in zip(looks["units"], looks["exemplar_ratio"]):
        assert f"<td>{u}</td><td>{ratio:.3f}</td>" in page, (u, ratio)


def test_named_units_are_shown(small, tmp_path):
    weights, data = small
    settings = jaxviz.ReportSettings(**{**SETTINGS.__dict__, "units": (2, 0)})  # vis_steps=0
    out = tmp_path / "new" / "r1"  # absent, parent too: created at the end
    results = jaxviz.make_report(out, network=weights.network, dataset=data, settings=settings, progress=False)
    assert results["units"]["shown"] == [2, 0]
    assert results["looks_for"] is None and "visualizations.png" not in results["figures"]
    assert "Not run: vis_steps is 0." in (out / "index.html").read_text()
    assert sorted(snapshot(out)) == sorted(["index.html", "results.json", *results["figures"]])
    assert leftovers(out) == []


# Each bad setting, with the words its message must hold: checked when the settings are made.
BAD_SETTINGS = [
    ({"layer": 3}, TypeError, "layer: expected a str"),
    ({"layer": ""}, ValueError, "layer"),
    ({"anchor": "middle"}, ValueError, "anchor: expected one of 'centered', 'valid', got 'middle'"),
    ({"anchor": None}, TypeError, "anchor"),
    ({"activation_images": 0}, ValueError, r"activation_images: expected an int >= 1, got 0"),
    ({"activation_images": 2.0}, TypeError, "activation_images"),
    ({"sigma": -1.0}, ValueError, r"sigma: expected a number >= 0, got -1"),
    ({"sigma": math.nan}, ValueError, "sigma"),
    ({"sigma": "2"}, TypeError, "sigma"),
    ({"threshold": 1.5}, ValueError, r"threshold: expected a number in \[0, 1\], got 1.5"),
    ({"threshold": math.inf}, ValueError, "threshold"),
    ({"threshold": True}, TypeError, "threshold"),
    ({"perplexity": 0}, ValueError, "perplexity: expected a number > 0"),
    ({"perplexity": -5.0}, ValueError, "perplexity"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2**32}, ValueError, "seed"),
    ({"seed": 1.0}, TypeError, "seed: expected an int"),
    ({"num_units": 0}, ValueError, r"num_units: expected an int in \[1, 16\]"),
    ({"num_units": -3}, ValueError, "num_units"),
    ({"num_units": 17}, ValueError, r"num_units: expected an int in \[1, 16\] \(the most units the figures show\)"),
    ({"num_units": True}, TypeError, "num_units: expected an int"),
    ({"k": 0}, ValueError, "k: expected an int >= 1"),
    ({"k": "3"}, TypeError, "k"),
    ({"window": 0}, ValueError, "window"),
    ({"window": 3.5}, TypeError, "window"),
    ({"stride": 0}, ValueError, "stride"),
    ({"stride": False}, TypeError, "stride"),
    ({"tsne_points": 1}, ValueError, "tsne_points: expected an int >= 2"),
    ({"tsne_iter": 100}, ValueError, "tsne_iter: expected an int >= 250"),
    ({"tsne_iter": 300.0}, TypeError, "tsne_iter"),
    ({"units": ()}, ValueError, "units: expected None or a tuple of 1 to 16"),
    ({"units": (1, -1)}, ValueError, "units"),
    ({"units": tuple(range(17))}, ValueError, r"units: .*the most the figures show; got 17"),
    ({"units": (1.5,)}, TypeError, "units"),
    ({"units": (True,)}, TypeError, "units"),
    ({"units": "1,2"}, TypeError, "units"),
    ({"trust_methods": ()}, ValueError, "trust_methods: expected None or a non-empty tuple of distinct names from occlusion"),
    ({"trust_methods": ("rise", "lime")}, ValueError, "trust_methods"),
    ({"trust_methods": "rise"}, TypeError, "trust_methods"),
    ({"sanity_methods": ("rise",)}, ValueError, r"sanity_methods: .* from saliency, ixg, ig, smoothgrad, gradcam"),
    ({"sanity_methods": ("ig", "ig")}, ValueError, "sanity_methods"),
    ({"sanity_images": 0}, ValueError, "sanity_images"),
    ({"units": 3}, TypeError, "units"),
]


@pytest.mark.parametrize("change,error,words", BAD_SETTINGS, ids=[f"{next(iter(c))}={next(iter(c.values()))!r}"
                                                                  for c, _, _ in BAD_SETTINGS])
def test_bad_settings_raise_before_anything_is_written(small, tmp_path, change, error, words):
    weights, data = small
    with pytest.raises(error, match=words):
        jaxviz.make_report(tmp_path / "r1", network=weights.network, dataset=data,
                           settings=jaxviz.ReportSettings(**{**SETTINGS.__dict__, **change}), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change,words", [
    ({"layer": "conv9"}, "layer"),
    ({"k": 41}, r"k: expected an int in \[1, 40\] \(the dataset size\)"),
    ({"units": (99,)}, r"units: expected indices in \[0, 16\)"),
    ({"units": (16,)}, "units"),
    ({"window": 40}, r"window: expected an int in \[1, 32\]"),
    ({"layer": "logits", "num_units": 6}, r"num_units: expected an int in \[1, 4\] \(layer logits has 4 units\)"),
])
def test_settings_that_do_not_fit_the_data_raise_before_anything_is_written(small, tmp_path, change, words):
    weights, data = small
    settings = jaxviz.ReportSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=words):
        jaxviz.make_report(tmp_path / "sub" / "r1", network=weights.network, dataset=data, settings=settings, progress=False)
    assert list(tmp_path.iterdir()) == []  # checked before any work: nothing written, no folder made


def test_settings_are_normalized_to_plain_python_values():
    s = jaxviz.ReportSettings(units=[np.int64(2), 0], num_units=np.int32(3), sigma=1, perplexity=np.float32(5))
    assert s.units == (2, 0) and type(s.num_units) is int and type(s.sigma) is float
    json.dumps(dataclasses.asdict(s))  # results.json must be able to hold them
    assert jaxviz.ReportSettings(num_units=16).num_units == settings_module.MAX_UNITS == 16


@pytest.mark.parametrize("kwargs,error,words", [
    ({"settings": {"k": 3}}, TypeError, "settings: expected a ReportSettings"),
    ({"network": "model.msgpack"}, TypeError, "network: expected a jaxviz.Network"),
    ({"network": Weights}, TypeError, "network"),
    ({"dataset": np.zeros((2, 32, 32, 3), np.uint8)}, TypeError, "dataset"),
    ({"progress": "yes"}, TypeError, "progress"),
])
def test_bad_arguments_raise_before_anything_is_written(small, tmp_path, kwargs, error, words):
    weights, data = small
    with pytest.raises(error, match=words):
        jaxviz.make_report(tmp_path / "r1", **{"network": weights.network, "dataset": data, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="out_dir: expected a directory, but .* is a file"):
        jaxviz.make_report(target)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_output_dir_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out_dir: cannot create .*file.* is a file, not a directory"):
        jaxviz.make_report(tmp_path / "file" / "sub" / "r1")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):  # not just "File exists"
        folder.check_output_dir(tmp_path / "file" / "r1")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_output_dir_in_an_unwritable_folder(small, tmp_path, monkeypatch):
    weights, data = small
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access  # root may write anywhere, so pretend rather than chmod
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == readonly else real_access(p, mode))
    with pytest.raises(PermissionError, match=r"out_dir: cannot write .*the directory .*readonly' is not writable"):
        jaxviz.make_report(readonly / "sub" / "r1", network=weights.network, dataset=data, settings=SETTINGS)
    assert list(readonly.iterdir()) == []


@pytest.mark.parametrize("size", [0, 1])
def test_too_small_dataset_is_rejected(small, tmp_path, size):
    weights, data = small
    tiny = Dataset(data.images[:size], data.labels[:size], data.class_names)
    with pytest.raises(ValueError, match=f"dataset: expected at least 2 images .*got {size}"):
        jaxviz.make_report(tmp_path / "r1", network=weights.network, dataset=tiny, progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- user models

# every method compares and the sanity check runs, on fewer RISE masks and images than the defaults (time only)
USER_SETTINGS = jaxviz.ReportSettings(k=2, num_units=2, tsne_points=6, tsne_iter=250, window=16, stride=16,
                                      rise_masks=64, trust_images=2, sanity_images=3, vis_steps=4)


def cifar_images(n: int, size: int = 64, seed: int = 7) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``n`` random uint8 images of ``size``, labelled with three CIFAR-10 classes in turn."""
    return make_uint8_images(n, seed, size), np.arange(n) % 3, ("cat", "dog", "ship")


def unlabelled_apply(variables, x, layer):
    """A network without classes: a 1x1 conv with ReLU ("maps", 6 channels), then a 5-d "embedding"."""
    maps = jax.nn.relu(jnp.einsum("nhwc,cd->nhwd", x, variables["mix"]) + variables["bias"])
    return maps if layer == "maps" else maps.mean(axis=(1, 2)) @ variables["proj"]


def test_report_of_a_network_without_class_names(tmp_path):
    rng = np.random.default_rng(3)
    variables = {"mix": rng.normal(0, 1, (3, 6)).astype(np.float32), "bias": rng.normal(0, 0.3, 6).astype(np.float32),
                 "proj": rng.normal(0, 1, (6, 5)).astype(np.float32)}
    net = jaxviz.from_function(unlabelled_apply, variables, layer_names=("maps", "embedding"),
                               input_shape=(16, 16, 3), class_names=None)
    assert not net.is_classifier and net.conv_layers() == ()
    images, labels, classes = cifar_images(9, size=16)
    data = Dataset(images, labels, classes, source="random 16x16 images")
    settings = dataclasses.replace(USER_SETTINGS, window=8, stride=8)
    results = jaxviz.make_report(tmp_path / "r1", network=net, dataset=data, settings=settings, progress=False)
    page, saved = check_complete(tmp_path / "r1", results, min_files=6)
    assert saved["evaluation"] is None and saved["settings"]["layer"] == "maps"
    assert "The network has no class names: not evaluated as a classifier." in page
    assert "Not a classifier (no class names), so no accuracy." in page
    assert "The network has no conv kernels." in page and "No conv layers." in page
    assert "confusion.png" not in saved["figures"] and "topk.png" in saved["figures"]
    assert saved["units"]["count"] == 6 and len(saved["units"]["shown"]) == 2
    # no apply_perturbed: no Grad-CAM; no layer owns variables: no sanity check, and the page says why
    assert "Grad-CAM" not in saved["trust"]["means"] and "saliency" in saved["trust"]["means"]
    assert saved["sanity"] is None and "Not run: the network has no layer with its own variables" in page
    with pytest.raises(ValueError, match="trust_methods: gradcam: the network has no apply_perturbed"):
        jaxviz.make_report(tmp_path / "r2", network=net, dataset=data, progress=False,
                           settings=dataclasses.replace(settings, trust_methods=("gradcam",)))
    assert not (tmp_path / "r2").exists()


def test_report_through_the_cli_with_an_nnx_model(tmp_path, capsys):
    """``--model`` with an nnx module holding Dropout (an RNG key and counter in its state): the whole report. The
    nnx ResNet of ``examples/`` equals its linen twin layer by layer (test_network), whose report the README runs."""
    from PIL import Image

    source = Path(__file__).resolve().parent / "dropout_nnx.py"
    images, labels = make_uint8_images(6, 8, 32), np.arange(6) % 3
    data_dir = tmp_path / "images"
    for i, (image, label) in enumerate(zip(images, labels)):
        (data_dir / ("cat", "dog", "bird")[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data_dir / ("cat", "dog", "bird")[label] / f"{i}.png")
    out = tmp_path / "r1"
    code = main(["report", "--model", f"{source}:build", "--data", "folder", "--data-dir", str(data_dir),
                 "--layer", "conv", "--k", "2", "--num-units", "2", "--tsne-points", "6", "--tsne-iter", "250",
                 "--window", "16", "--stride", "16", "--rise-masks", "64", "--trust-images", "2",
                 "--sanity-images", "3", "--vis-steps", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out / 'index.html'}" in captured.out
    saved = json.loads((out / "results.json").read_text())
    page, _ = check_complete(out, saved)
    assert saved["settings"]["layer"] == "conv" and saved["units"]["count"] == 4
    assert saved["network"]["name"] == "DropoutNet" and saved["evaluation"]["images"] == 6
    assert "filters_conv.png" in saved["figures"] and saved["sanity"] is not None


# --------------------------------------------------------------------------- the output folder: one whole report


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_new_report_replaces_an_earlier_one_whole(small, report, tmp_path, monkeypatch, fast_tsne, exchange):
    weights, data = small
    if not exchange:
        monkeypatch.setattr(jaxviz._io, "exchange_paths", lambda a, b: False)
    out, before = earlier_report(report, tmp_path / "r1")
    (out / ".index.html.abc123.tmp").write_text("a write killed long ago")  # atomic_path's leftover: still ours
    settings = jaxviz.ReportSettings(**{**SETTINGS.__dict__, "units": (2, 0)})
    results = jaxviz.make_report(out, network=weights.network, dataset=data, settings=settings, progress=False)
    after = snapshot(out)
    assert sorted(after) == sorted(["index.html", "results.json", *results["figures"]])
    assert json.loads(after["results.json"])["units"]["shown"] == [2, 0] != json.loads(before["results.json"])
    assert after["index.html"] != before["index.html"]
    assert leftovers(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


@pytest.mark.parametrize("content", ["user-file", "report-and-user-file", "subfolder", "other-json"])
def test_a_folder_that_is_not_a_report_is_never_replaced(small, report, tmp_path, content):
    weights, data = small
    out = tmp_path / "r1"
    if content.startswith("report"):
        earlier_report(report, out)
    else:
        out.mkdir()
    if "user-file" in content:
        (out / "notes.txt").write_text("my notes")
    if content == "subfolder":
        (out / "photos").mkdir()
    if content == "other-json":
        (out / "results.json").write_text('{"accuracy": 0.5}')
    before = snapshot(out) if content != "subfolder" else None
    with pytest.raises(FileExistsError, match=r"out_dir: refusing to replace .*r1'.*choose another directory"):
        jaxviz.make_report(out, network=weights.network, dataset=data, settings=SETTINGS, progress=False)
    if before is not None:
        assert snapshot(out) == before
    assert (out / "photos").is_dir() or content != "subfolder"
    assert leftovers(out) == []


def test_a_second_writer_is_refused(small, report, tmp_path):
    weights, data = small
    out, before = earlier_report(report, tmp_path / "r1")
    with path_lock(out):  # what a running report holds
        message = (rf"out_dir: another jaxviz report is writing '{re.escape(str(out))}' "
                   rf"\(lock file '{re.escape(str(tmp_path / '.r1.lock'))}' held by pid {os.getpid()}\)")
        with pytest.raises(BlockingIOError, match=message):
            jaxviz.make_report(out, network=weights.network, dataset=data, settings=SETTINGS, progress=False)
        assert snapshot(out) == before and leftovers(out) == [".r1.lock"]
    assert leftovers(out) == []


def test_leftovers_of_a_writer_killed_between_the_renames(tmp_path):
    """The old report was renamed aside, the new one not yet in: the next writer puts the old one back."""
    aside = tmp_path / ".r1.old-123-abcd1234"
    aside.mkdir()
    (aside / "index.html").write_text("old")
    (tmp_path / ".r1.tmp-123-abcd1234").mkdir()
    (tmp_path / ".r1.tmp-99-ffff0000").mkdir()
    (tmp_path / ".r1.tmp-not-ours").mkdir()  # not a name this module makes: left alone
    folder._restore_or_remove_leftovers(tmp_path / "r1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r1.tmp-not-ours", "r1"]
    assert (tmp_path / "r1" / "index.html").read_text() == "old"


SIGNAL_SCRIPT = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack if no exit comes
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # as jaxviz.cli.main does
import numpy as np
import jaxviz
from jaxviz.report import plots

out, weights_file, data_file = sys.argv[1:]
weights = jaxviz.load_weights(weights_file)
arrays = np.load(data_file)
data = jaxviz.Dataset(arrays["images"], arrays["labels"], weights.class_names, source="test images")
settings = jaxviz.ReportSettings(**{settings!r})
real_save = plots.save_figure

def save_figure(fig, path, **kw):  # the first figure is written: say where, then wait for the signal
    real_save(fig, path, **kw)
    print("FIGURE", path, flush=True)
    for _ in range(3000):  # short sleeps: a signal that the kernel hands to another thread (XLA's, OpenMP's) only
        time.sleep(0.1)    # raises in the main thread at its next bytecode, never inside one long sleep

plots.save_figure = save_figure
jaxviz.make_report(out, network=weights.network, dataset=data, settings=settings, progress=False)
"""


@pytest.fixture(scope="module")
def signal_script(small, tmp_path_factory):
    """The script above and the tiny weights and data as files (loading beats initialising in each process)."""
    weights, data = small
    root = tmp_path_factory.mktemp("signal")
    jaxviz.save_weights(root / "weights.msgpack", weights.model, weights.variables, class_names=weights.class_names,
                        metadata=weights.metadata)
    np.savez(root / "data.npz", images=data.images, labels=data.labels)
    script = root / "run_report.py"
    script.write_text(textwrap.dedent(SIGNAL_SCRIPT.format(settings=dataclasses.asdict(SETTINGS))))
    return [sys.executable, str(script)], [str(root / "weights.msgpack"), str(root / "data.npz")]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python installs its KeyboardInterrupt handler over SIG_DFL only
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_a_signal_mid_report_leaves_the_earlier_report(small, report, signal_script, tmp_path, fast_tsne, sig):
    """A run interrupted after its first figure: the folder is exactly the earlier report, nothing left beside."""
    work = tmp_path / "work"
    work.mkdir()
    out, before = earlier_report(report, work / "r1")
    command, files = signal_script
    # as from a terminal: SIGINT handled and unblocked in the child, whatever this worker process inherited or set
    proc = subprocess.Popen([*command, str(out), *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        ready = select.select([proc.stdout], [], [], 120)[0]
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("FIGURE"), f"no figure written: {line!r}; stderr: {proc.stderr.read()[-3000:]}"
        figure = Path(line.split(maxsplit=1)[1].strip())
        # Mid-run: the new report grows in a temporary sibling; the folder is still the whole earlier report.
        assert re.fullmatch(r"\.r1\.tmp-\d+-[0-9a-f]+", figure.parent.name) and figure.parent.parent == work
        assert snapshot(out) == before and (work / ".r1.lock").read_text().strip() == str(proc.pid)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # faulthandler: where every thread is
            time.sleep(2)
            proc.kill()
            pytest.fail(f"no exit within 60 s of {sig.name}; stderr: {proc.stderr.read()[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert code == {signal.SIGINT: -signal.SIGINT, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert snapshot(out) == before
    if sig != signal.SIGKILL:
        assert leftovers(out) == []
        return
    # SIGKILL skips all cleanup: its temporary folder and lock file stay, but block nothing; the next
    # report removes them.
    assert leftovers(out) == [".r1.lock", figure.parent.name]
    weights, data = small
    results = jaxviz.make_report(out, network=weights.network, dataset=data, settings=SETTINGS, progress=False)
    assert sorted(snapshot(out)) == sorted(["index.html", "results.json", *results["figures"]])
    assert leftovers(out) == []


# --------------------------------------------------------------------------- the command line


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status; usage errors found by argparse exit (status 2) instead of returning."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("args,words", [
    (["--num-units", "17"], "--num-units: expected an int in [1, 16]"),  # a setting's error names its option
    (["--units", "1,x"], "--units"),
    (["--units", ",".join(map(str, range(17)))], "--units: expected None or a tuple of 1 to 16"),
    (["--tsne-iter", "10"], "--tsne-iter: expected an int >= 250"),
])
def test_cli_checks_settings_before_writing(tmp_path, capsys, args, words):
    code = run_cli(["report", "--out", str(tmp_path / "sub" / "r1"), *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.startswith("jaxviz report: error: ") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_checks_the_output_folder_before_loading_anything(tmp_path, capsys, monkeypatch):
    def no_loading(args):
        raise AssertionError("data and weights were loaded before the output folder was checked")

    monkeypatch.setattr("jaxviz.cli.commands.load", no_loading)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    for out, words in [("afile", "is a file"), ("afile/r1", "is a file, not a directory"),
                       ("mine", "refusing to replace")]:
        assert main(["report", "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxviz report: error: out_dir: ") and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_one_channel_images_are_drawn_in_grayscale():
    """A 1-channel model's images (N, H, W, 1): gray from 0 (black) to 255 (white), not a colour map."""
    from jaxviz import plots

    images = np.stack([np.full((4, 4, 1), 64, np.uint8), np.full((4, 4, 1), 255, np.uint8)])
    fig = plots.plot_attribution_maps(images, {"m": np.zeros((2, 4, 4), np.float32)},
                                      titles=[plots.image_title("0: ", true="cat", predicted="dog"), "1"])
    first = fig.axes[0].images[0]
    assert first.get_cmap().name == "gray" and first.get_clim() == (0, 255)
    assert first.get_array().shape == (4, 4)
    assert fig.axes[0].get_ylabel() == "0: true: cat / pred: dog"
