"""Every figure function runs headless on tiny inputs and returns a figure; numerics never import matplotlib."""

import ast
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

import jaxviz
from jaxviz.report import plots


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def _images(rng, *shape):
    return rng.integers(0, 256, size=(*shape, 8, 8, 3), dtype=np.uint8)


def test_every_plot_returns_a_figure(rng, tmp_path):
    cells, filled = jaxviz.filter_grid(rng.normal(size=(3, 3, 3, 5)))
    figures = {
        "filters": plots.plot_filters(cells, filled, title="k"),
        "activations": plots.plot_activation_maps(_images(rng, 2), rng.normal(size=(2, 4, 4, 3)), layer="conv1"),
        "topk": plots.plot_top_k(_images(rng, 3, 2), [5, 9], labels=np.zeros((3, 2), int), class_names=("a",)),
        "masked": plots.plot_masked(_images(rng, 3, 2), ["image 1", "image 2"]),
        "heatmaps": plots.plot_heatmaps(_images(rng, 2, 2), rng.normal(size=(2, 2, 8, 8)), [1, 2]),
        "occluded": plots.plot_occluded_examples(_images(rng, 2, 3)),
        "tsne": plots.plot_tsne(rng.normal(size=(20, 2)), np.arange(20) % 3, ("a", "b", "c")),
        "confusion": plots.plot_confusion(rng.integers(0, 9, size=(3, 3)), ("a", "b", "c")),
        "selectivity": plots.plot_selectivity(rng.integers(0, 5, size=(2, 3)), [4, 7], ("a", "b", "c")),
        "visualizations": plots.plot_visualizations(_images(rng, 3, 2), [1, 4, 6], notes=["x2.0", "x1.1", "x3.0"]),
        "looks_for": plots.plot_looks_for(_images(rng, 2), _images(rng, 3, 2), [5, 9], notes=["x2.0 a", "x0.5 b"],
                                          labels=np.zeros((3, 2), int), class_names=("a",)),
        "training": plots.plot_training([{"epoch": 1, "train_accuracy": 0.5, "test_accuracy": 0.4},
                                         {"epoch": 2, "train_accuracy": 0.6, "test_accuracy": 0.5}]),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        plots.save_figure(fig, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_plots_draw_into_a_given_axes(rng):
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.plot_tsne(rng.normal(size=(9, 2)), np.arange(9) % 3, ("a", "b", "c"), ax=ax) is fig
    assert len(ax.collections) == 3  # one scatter per class
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]


def test_unit_titles(rng):
    fig = plots.plot_top_k(_images(rng, 2, 2), [3, "image 7"])
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["unit 3", "image 7"]


def test_each_picture_stands_above_its_top_images(rng):
    """plot_looks_for: row 0 the pictures with their notes, then the top images with their classes."""
    pictures, tops = _images(rng, 2), _images(rng, 3, 2)
    fig = plots.plot_looks_for(pictures, tops, [5, 9], notes=["x2.0 a", "x0.5 b"], labels=np.array([[0, 1]] * 3),
                               class_names=("a", "b"))
    axes = np.asarray(fig.axes).reshape(4, 2)
    assert [ax.get_title() for ax in axes[0]] == ["unit 5", "unit 9"]
    assert [ax.get_xlabel() for ax in axes[0]] == ["x2.0 a", "x0.5 b"]
    assert [ax.get_xlabel() for ax in axes[1]] == ["a", "b"]
    np.testing.assert_array_equal(axes[0, 1].get_images()[0].get_array(), pictures[1])
    np.testing.assert_array_equal(axes[3, 0].get_images()[0].get_array(), tops[2, 0])


NUMERICS_MODULES = (
    "jaxviz", "jaxviz._batching", "jaxviz.data", "jaxviz.data.images", "jaxviz.data.cifar10",
    "jaxviz.models.network", "jaxviz.models.adapters", "jaxviz.models.cnn", "jaxviz.models.weights",
    "jaxviz.models.train", "jaxviz.models.checkpoint", "jaxviz.models.loading",
    "jaxviz.engine.activations", "jaxviz.methods.occlusion", "jaxviz.engine.plan", "jaxviz.engine.inputs",
    "jaxviz.analysis.topk", "jaxviz.analysis.units", "jaxviz.analysis.unit_occlusion", "jaxviz.analysis.metrics",
    "jaxviz.analysis.masks", "jaxviz.analysis.filters", "jaxviz.analysis.embedding",
    "jaxviz.report", "jaxviz.report.plots", "jaxviz.report.page", "jaxviz.report.analyses", "jaxviz.report.render",
    "jaxviz.report.folder", "jaxviz.report.settings", "jaxviz.cli", "jaxviz.cli.commands",
)


def _heavy_imports(code: str) -> list[str]:
    code += "\nprint(sorted(m for m in ('matplotlib', 'sklearn', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_numerics_modules_do_not_import_matplotlib():
    # jaxviz/__init__ imports jaxviz.report.plots, which must import matplotlib only when drawing
    assert _heavy_imports("import jaxviz") == []
    assert _heavy_imports("import " + ", ".join(NUMERICS_MODULES)) == []
    # ... and drawing does import it (the check above would pass vacuously otherwise)
    assert "matplotlib" in _heavy_imports("import numpy as np, jaxviz\n"
                                          "jaxviz.plots.plot_confusion(np.eye(2, dtype=int), ('a', 'b'))")


def test_grids_too_large_to_read_are_refused():
    images = np.zeros((2, plots.MAX_COLUMNS + 1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=f"at most {plots.MAX_COLUMNS} units"):
        plots.plot_top_k(images, list(range(plots.MAX_COLUMNS + 1)))
    maps = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"channels: expected channel indices in \[0, 8\)"):
        plots.plot_activation_maps(np.zeros((1, 4, 4, 3), np.uint8), maps, channels=[999])


def test_image_titles_name_the_label_apart_from_the_prediction():
    """A prediction never reads as the label; a row label beside a small image stacks the parts (one line each,
    so a long 'true: automobile / pred: automobile' does not run into the next row)."""
    assert plots.image_title("3: ", true="cat", predicted="dog", explained="logits[5]") == \
        "3: true: cat / pred: dog / logits[5]"
    assert plots.image_title(true="cat", explained="unit 4") == "true: cat / unit 4"
    assert plots.image_title(true="automobile", predicted="automobile", sep="\n") == \
        "true: automobile\npred: automobile"
