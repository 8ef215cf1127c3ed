"""``make_report`` on a tiny model and tiny data: a complete page, only existing files, no half-written output."""

import json
import re

import jax
import numpy as np
import pytest

import jaxviz
from jaxviz.data import Dataset
from jaxviz.weights import Weights

SETTINGS = jaxviz.ReportSettings(k=3, num_units=3, window=11, stride=8, tsne_points=40, tsne_iter=300)


@pytest.fixture(scope="module")
def small(tiny_model):
    """A 4-class tiny CNN and 40 random images."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    data = Dataset(images, np.arange(40) % 4, ("w", "x", "y", "z"), source="test images")
    model = tiny_model.clone(num_classes=4)
    weights = Weights(model, jaxviz.init_variables(model, jax.random.key(1)), data.class_names, {"dataset": "tiny"})
    return weights, data


@pytest.fixture(scope="module")
def report(small, tmp_path_factory):
    weights, data = small
    out = tmp_path_factory.mktemp("report")
    results = jaxviz.make_report(out, weights=weights, dataset=data, settings=SETTINGS, progress=False)
    return out, results, weights, data


def test_index_references_only_existing_files(report):
    out, results, _, _ = report
    page = (out / "index.html").read_text()
    refs = re.findall(r'(?:href|src)="([^"]+)"', page) + re.findall(r"(?:href|src)='([^']+)'", page)
    files = [r for r in refs if not r.startswith("data:")]
    assert "results.json" in files and len(files) >= 10
    for ref in files:
        assert (out / ref).is_file(), ref
    assert page.count("data:image/png;base64,") == len(results["figures"])


def test_report_has_every_analysis_and_the_answers(report):
    out, results, _, data = report
    page = (out / "index.html").read_text()
    for heading in ("Model", "Answers to the notebook", "Accuracy and confusions", "Filters", "Activation maps",
                    "Top-K images per unit", "Occlusion", "t-SNE", "Run settings and timings"):
        assert heading in page, heading
    saved = json.loads((out / "results.json").read_text())
    assert saved["evaluation"]["images"] == len(data)
    assert len(saved["units"]["shown"]) == 3
    assert set(saved["timings_seconds"]) == {"evaluate", "filters", "activations", "features", "top-k",
                                            "occlusion", "t-SNE"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(saved["figures"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_named_units_are_shown(small, tmp_path):
    weights, data = small
    settings = jaxviz.ReportSettings(**{**SETTINGS.__dict__, "units": (2, 0)})
    results = jaxviz.make_report(tmp_path, weights=weights, dataset=data, settings=settings, progress=False)
    assert results["units"]["shown"] == [2, 0]


@pytest.mark.parametrize("change,words", [
    ({"layer": "conv9"}, "layer"),
    ({"k": 41}, "k:"),
    ({"units": (99,)}, "units"),
    ({"units": ()}, "units"),
    ({"window": 40}, "window"),
    ({"tsne_iter": 100}, "tsne_iter"),
])
def test_bad_settings_raise_and_write_no_page(small, tmp_path, change, words):
    weights, data = small
    settings = jaxviz.ReportSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=words):
        jaxviz.make_report(tmp_path, weights=weights, dataset=data, settings=settings, progress=False)
    assert list(tmp_path.iterdir()) == []  # checked before any work: nothing written


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="out_dir"):
        jaxviz.make_report(target)


def test_empty_dataset_is_rejected(small, tmp_path):
    weights, data = small
    empty = Dataset(data.images[:0], data.labels[:0], data.class_names)
    with pytest.raises(ValueError, match="dataset"):
        jaxviz.make_report(tmp_path, weights=weights, dataset=empty, progress=False)
