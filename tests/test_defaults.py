"""Defaults that several entry points share have one owner each (issue 17): the blur of fill="blur", the occluder
size, the regular grid of cells. Each test checks the behaviour against an independent reference or the wiring of
every entry point to the one constant."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import jaxviz
from jaxviz.analysis.unit_occlusion import UNIT_WINDOW
from jaxviz.cli import build_parser
from jaxviz.engine.perturb import BLUR_SIGMA
from jaxviz.evaluation import faithfulness
from jaxviz.methods.occlusion import WINDOW
from jaxviz.methods.registry import METHODS

from numerics import assert_close


def default(fn, name):
    return inspect.signature(fn).parameters[name].default


def f(x):
    w = jnp.arange(x[0].size, dtype=jnp.float32).reshape(x.shape[1:]) / x[0].size
    return jnp.stack([(x * w).sum((1, 2, 3)), (x * x).sum((1, 2, 3))], -1)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((2, 12, 12, 3)).astype(np.float32)


def test_blur_sigma_values_and_defaults():
    assert BLUR_SIGMA == 3.0  # the value before it had one owner
    for fn in (jaxviz.occlude, jaxviz.deletion_curve, jaxviz.mu_fidelity):  # insertion_curve: deletion_curve's
        assert default(fn, "blur_sigma") == BLUR_SIGMA, fn.__name__


@pytest.mark.parametrize("method", ["rise", "ablation", "ig"])
def test_blur_fill_is_a_gaussian_of_blur_sigma(x, method):
    blurred = gaussian_filter(x.astype(np.float64), sigma=(0, 3.0, 3.0, 0)).astype(np.float32)  # independent

    def result(fill):
        if method == "rise":
            return jaxviz.rise(f, x, num_masks=8, cells=3, fill=fill).maps
        if method == "ablation":
            return jaxviz.feature_ablation(f, x, segments=jaxviz.grid_segments(12, 12, cells=3), fill=fill).scores
        return jaxviz.integrated_gradients(f, x, baselines=fill, n_steps=4, targets=np.zeros(2, int)).attributions

    assert_close(result("blur"), result(blurred))


def test_occluder_window_defaults():
    assert (WINDOW, UNIT_WINDOW) == (8, 11)  # the values before they had one owner
    assert METHODS["occlusion"].options().window == WINDOW  # read by compare_methods, run_dataset, the CLI
    assert build_parser().parse_args(["attribute", "--method", "occlusion", "--out", "o"]).window == WINDOW
    assert default(jaxviz.occlude_top_images, "window") == UNIT_WINDOW
    assert jaxviz.ReportSettings().window == UNIT_WINDOW


@pytest.mark.parametrize("h, w, cells", [(12, 12, 3), (7, 10, 4), (5, 5, 5), (9, 4, 1)])
def test_grid_cells_have_one_formula(h, w, cells):
    want = np.array([[(y * cells // h) * cells + xx * cells // w for xx in range(w)] for y in range(h)])
    np.testing.assert_array_equal(jaxviz.grid_segments(h, w, cells=cells), want)
    assert not hasattr(faithfulness, "_grid_cells")  # MuFidelity's lattice is grid_segments
