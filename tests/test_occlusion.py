"""The fused occlusion engine against naive references, Captum's semantics and bad input; the
notebook's occlusion of each unit's top images against the engine run unit by unit."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz

from conftest import make_uint8_images
from numerics import assert_close, max_rel_error
from references import occlude_notebook, occlude_pair_loop, occlude_position_loop

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = (occlude_notebook, occlude_position_loop, occlude_pair_loop)


@pytest.fixture(scope="module")
def cnn():
    model = jaxviz.CNN(widths=(4, 8), hidden=16)
    variables = jaxviz.init_variables(model, jax.random.key(0))
    # non-trivial batch-norm statistics so every layer matters
    variables = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), variables)
    variables["batch_stats"] = jax.tree_util.tree_map(jnp.abs, variables["batch_stats"])
    return model, variables


@pytest.fixture(scope="module")
def net(cnn):
    return jaxviz.from_cnn(*cnn)


@pytest.fixture(scope="module")
def images():
    return np.asarray(jax.random.uniform(jax.random.key(2), (3, 32, 32, 3)), np.float32)


# ------------------------------------------------------------------ positions


def test_window_spans_centered_matches_notebook_loop():
    # notebook: for i in range(st, 32, 4): ims[i-st : i-st+11], numpy clipping at 32
    spans = jaxviz.window_spans(32, 11, 4, "centered")
    expected = [(i - 5, min(i - 5 + 11, 32)) for i in range(5, 32, 4)]
    assert [tuple(s) for s in spans] == expected
    assert spans[-1].tolist() == [24, 32]  # cut at the border


def test_window_spans_valid_matches_captum_counts():
    # Captum: ceil((dim - win) / stride) + 1 shifts; the last one is cut by negative padding
    assert jaxviz.window_spans(5, 2, 2, "valid").tolist() == [[0, 2], [2, 4], [4, 5]]
    assert jaxviz.window_spans(4, 3, 1, "valid").tolist() == [[0, 3], [1, 4]]
    assert jaxviz.window_spans(32, 8, 2, "valid").shape == (13, 2)
    assert jaxviz.window_spans(4, 4, 1, "valid").tolist() == [[0, 4]]


# ------------------------------------------------------------------ fused == naive


CASES = [  # window, stride: odd/even, dividing/not, window = image
    ((5, 5), (3, 3)),
    ((4, 6), (2, 5)),
    ((32, 32), (1, 1)),
    ((7, 7), (4, 4)),
]


@pytest.mark.parametrize("anchor", ["centered", "valid"])
@pytest.mark.parametrize("window,stride", CASES)
def test_fused_equals_naive_references_on_cnn(net, images, anchor, window, stride):
    f, variables = net.layer_fn("fc1"), net.variables
    fill = 0.3
    result = jaxviz.occlude(f, images, params=variables, window=window, stride=stride, anchor=anchor, fill=fill,
                            chunk_size=5)
    for reference in REFERENCES:
        base, grid = reference(f, images, params=variables, window=window, stride=stride, anchor=anchor, fill=fill)
        assert result.grid.shape == grid.shape, reference.__name__
        assert max_rel_error(result.base, base) < 1e-5, reference.__name__
        assert max_rel_error(result.grid, grid, scale=result.base) < 1e-5, reference.__name__


@pytest.mark.parametrize("kind", ["per_channel", "image", "per_image"])
def test_fused_equals_reference_with_array_fills(net, images, kind):
    f, variables = net.layer_fn("logits"), net.variables
    rng = np.random.default_rng(0)
    shape = {"per_channel": (3,), "image": (32, 32, 3), "per_image": (3, 32, 32, 3)}[kind]
    fill = rng.uniform(size=shape).astype(np.float32)
    result = jaxviz.occlude(f, images, params=variables, window=6, stride=5, fill=fill)
    base, grid = occlude_position_loop(f, images, params=variables, window=(6, 6), stride=(5, 5), fill=fill)
    assert max_rel_error(result.grid, grid, scale=result.base) < 1e-5


def test_blur_fill_equals_reference_with_blurred_images(net, images):
    from scipy.ndimage import gaussian_filter

    f, variables = net.layer_fn("logits"), net.variables
    result = jaxviz.occlude(f, images, params=variables, window=8, stride=8, fill="blur", blur_sigma=2.0)
    blurred = gaussian_filter(images, sigma=(0, 2.0, 2.0, 0))
    _, grid = occlude_position_loop(f, images, params=variables, window=(8, 8), stride=(8, 8), fill=blurred)
    assert max_rel_error(result.grid, grid, scale=result.base) < 1e-5
    assert np.abs(result.grid).max() > 0


def test_any_pure_function_and_unit_selection(images):
    w = jax.random.normal(jax.random.key(3), (32 * 32 * 3, 6)) / 50

    def f(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w)

    full = jaxviz.occlude(f, images, window=9, stride=7, anchor="valid")
    some = jaxviz.occlude(f, images, window=9, stride=7, anchor="valid", units=[4, 1])
    _, grid = occlude_pair_loop(f, images, window=(9, 9), stride=(7, 7), anchor="valid")
    assert max_rel_error(full.grid, grid, scale=full.base) < 1e-5
    assert_close(some.grid, full.grid[..., [4, 1]], scale=full.base)
    assert_close(some.base, full.base[:, [4, 1]])


def test_sign_is_original_minus_occluded(images):
    # f = mean brightness: hiding pixels with 0 lowers it, so the grid is positive
    result = jaxviz.occlude(lambda x: x.mean(axis=(1, 2, 3))[:, None], images, window=4, stride=4)
    assert (result.grid > 0).all()
    assert_close(result.grid[0, 0, 0, 0], images[0, :4, :4].sum() / images[0].size)


# ------------------------------------------------------------------ pixel maps (Captum semantics)


def _pixel_reference(grid, rows, cols, shape):
    total = np.zeros((grid.shape[0], *shape, *grid.shape[3:]))
    count = np.zeros(shape)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            total[:, r0:r1, c0:c1] += grid[:, i, j][:, None, None]
            count[r0:r1, c0:c1] += 1
    count = count.reshape(count.shape + (1,) * (total.ndim - 3))
    return np.where(count > 0, total / np.maximum(count, 1), 0)


@pytest.mark.parametrize("anchor", ["centered", "valid"])
def test_pixel_is_mean_over_covering_windows(net, images, anchor):
    result = jaxviz.occlude(net.layer_fn("logits"), images, params=net.variables, window=(6, 5),
                            stride=(3, 4), anchor=anchor)
    expected = _pixel_reference(result.grid, result.row_spans, result.col_spans, (32, 32))
    assert_close(result.pixel, expected)
    targets = np.array([3, 0, 9])
    assert_close(result.pixel_map(targets), expected[np.arange(3), ..., targets], scale=expected)


def _captum_conv_net(x):
    """Captum's BasicModel_ConvNet_One_Conv (tests/helpers/basic_models.py) in JAX, NHWC, on x + 1.

    Captum's fixture adds a second all-ones input; occluding only the first
    input with baseline 0 is occluding x in f(x) = net(x + 1).
    """
    x = x + 1.0
    kernel = jnp.ones((3, 3, 1, 2))
    h = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + jnp.array([-50.0, -75.0]))
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(x.shape[0], 8)  # torch's view(-1, 8) of NCHW
    w = jnp.concatenate([jnp.ones((4, 5)), -jnp.ones((4, 3))], axis=1)
    return jax.nn.relu(h @ w.T)


@pytest.mark.parametrize("window,stride,expected", [
    ((4, 4), (1, 1), np.full((4, 4), 67.0)),
    ((2, 3), (2, 1), np.array([[17, 17, 17, 17], [17, 17, 17, 17], [64, 65.5, 65.5, 67], [64, 65.5, 65.5, 67]])),
    ((2, 4), (2, 1), np.array([[17.0] * 4, [17.0] * 4, [67.0] * 4, [67.0] * 4])),
])
def test_valid_anchoring_matches_captum_fixtures(window, stride, expected):
    # values from captum tests/attr/test_occlusion.py (test_simple_multi_input_conv*), target 0
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    result = jaxviz.occlude(jax.jit(_captum_conv_net), x, window=window, stride=stride, anchor="valid")
    assert_close(result.pixel_map([0])[0], expected)


def test_matches_captum_itself_when_installed():
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7 * 9 * 2, 3)).astype(np.float32) / 5
    x = rng.uniform(size=(2, 7, 9, 2)).astype(np.float32)

    def f_jax(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w)

    def f_torch(v):  # NCHW -> NHWC flatten order
        return torch.tanh(v.permute(0, 2, 3, 1).reshape(v.shape[0], -1) @ torch.from_numpy(w))

    ours = jaxviz.occlude(f_jax, x, window=(3, 4), stride=(2, 3), anchor="valid", fill=0.25)
    theirs = captum_attr.Occlusion(f_torch).attribute(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), sliding_window_shapes=(2, 3, 4), strides=(2, 2, 3),
        baselines=0.25, target=1)
    assert_close(ours.pixel_map([1, 1]), theirs.numpy()[:, 0], scale=ours.base, rel=1e-4)  # two frameworks


# ------------------------------------------------------------------ invariance and compilation


def test_chunk_size_does_not_change_results(net, images):
    f, variables = net.layer_fn("fc1"), net.variables
    results = [jaxviz.occlude(f, images, params=variables, window=8, stride=6, chunk_size=c)
               for c in (1, 7, None, 3 * 25)]
    for result in results[1:]:
        assert_close(result.grid, results[0].grid, scale=results[0].base, err_msg=f"chunk {result.chunk_size}")


def test_materialize_does_not_change_results(net, images):
    f, variables = net.layer_fn("fc1"), net.variables
    fused = jaxviz.occlude(f, images, params=variables, window=7, stride=5, chunk_size=20, materialize=False)
    barrier = jaxviz.occlude(f, images, params=variables, window=7, stride=5, chunk_size=20, materialize=True)
    assert fused.grid.shape == barrier.grid.shape == (3, 6, 6, 16)
    np.testing.assert_array_equal(fused.base, barrier.base)  # one base program
    assert_close(fused.grid, barrier.grid, scale=barrier.base)  # two chunk programs
    assert_close(fused.pixel, barrier.pixel, scale=barrier.base)


def test_result_is_frozen_and_pixel_is_computed_once(net, images):
    result = jaxviz.occlude(net.layer_fn("logits"), images, params=net.variables, window=16, stride=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.grid = np.zeros_like(result.grid)
    assert result.pixel is result.pixel
    assert result.pixel.shape == (3, 32, 32, 10)


def test_second_call_and_new_images_do_not_retrace(images):
    traces = []
    w = jax.random.normal(jax.random.key(4), (32 * 32 * 3, 4))

    def f(x):
        traces.append(x.shape)
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w)

    first = jaxviz.occlude(f, images, window=5, stride=3)
    after_first = len(traces)
    again = jaxviz.occlude(f, images, window=5, stride=3)
    other = jaxviz.occlude(f, images[::-1] * 0.5, window=5, stride=3)
    assert after_first > 0
    assert len(traces) == after_first, f"retraced: {traces[after_first:]}"
    np.testing.assert_array_equal(first.grid, again.grid)
    assert not np.allclose(other.grid, first.grid)


@pytest.mark.slow
def test_same_result_on_four_devices(tmp_path):
    script = textwrap.dedent("""
        import json, sys, jax, numpy as np, jaxviz
        x = np.asarray(jax.random.uniform(jax.random.key(2), (5, 32, 32, 3)), np.float32)
        model = jaxviz.CNN(widths=(4, 8), hidden=16)
        variables = jaxviz.init_variables(model, jax.random.key(0))
        f = jaxviz.from_cnn(model, variables).layer_fn("fc1")
        many = jaxviz.occlude(f, x, params=variables, window=7, stride=5, chunk_size=12)
        one = jaxviz.occlude(f, x, params=variables, window=7, stride=5, chunk_size=12, devices=jax.devices()[:1])
        np.save(sys.argv[1], many.grid)
        print(json.dumps({"devices": len(jax.devices()),
                          "max_rel_diff": float(np.abs(many.grid - one.grid).max() / np.abs(one.base).max())}))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "grid.npy")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["max_rel_diff"] < 1e-5  # relative to the scale of f
    # and the same as this single-device process
    x = np.asarray(jax.random.uniform(jax.random.key(2), (5, 32, 32, 3)), np.float32)
    model = jaxviz.CNN(widths=(4, 8), hidden=16)
    variables = jaxviz.init_variables(model, jax.random.key(0))
    here = jaxviz.occlude(jaxviz.from_cnn(model, variables).layer_fn("fc1"), x, params=variables, window=7, stride=5)
    assert_close(np.load(tmp_path / "grid.npy"), here.grid, scale=here.base)


# ------------------------------------------------------------------ bad input


def _f(x):
    return x.reshape(x.shape[0], -1)[:, :3]


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(window=33), ValueError, "window"),
    (dict(window=(4, 40)), ValueError, "window"),
    (dict(window=0), ValueError, "window"),
    (dict(window=2.5), TypeError, "window"),
    (dict(window=4, stride=0), ValueError, "stride"),
    (dict(window=4, anchor="same"), ValueError, "anchor"),
    (dict(window=4, fill=np.zeros(4)), ValueError, "fill"),
    (dict(window=4, fill=np.zeros((3, 32, 32))), ValueError, "fill"),
    (dict(window=4, fill="gray"), ValueError, "fill"),
    (dict(window=4, fill=np.nan), ValueError, "fill"),
    (dict(window=4, units=[7]), ValueError, "units"),
    (dict(window=4, chunk_size=0), ValueError, "chunk_size"),
    (dict(window=4, memory_budget=0), ValueError, "memory_budget"),
    (dict(window=4, memory_budget=1.5e3 + 0.5), TypeError, "memory_budget"),
    (dict(window=4, chunk_size=2.5), TypeError, "chunk_size"),
    (dict(window=4, chunk_size=True), TypeError, "chunk_size"),
    (dict(window=4, units=[2.7]), TypeError, "units.*int"),
    (dict(window=4, units=np.array([0.0, 1.0])), TypeError, "units.*int"),
    (dict(window=4, units=[True, False]), ValueError, "units.*boolean mask.*shape \\(3,\\)"),
    (dict(window=4, units="1,2"), TypeError, "units"),
    (dict(window=4, units=[]), ValueError, "units"),
    (dict(window=4, fill=None), TypeError, "fill.*NoneType"),
    (dict(window=4, fill="abc"), ValueError, "fill.*'abc'"),
    (dict(window=4, fill=object()), TypeError, "fill"),
    (dict(window=4, fill="blur", blur_sigma=0), ValueError, "blur_sigma"),
])
def test_bad_options_raise_clear_errors(images, kwargs, error, words):
    with pytest.raises(error, match=words):
        jaxviz.occlude(_f, images, **kwargs)


def test_bad_images_and_functions_raise_clear_errors(images):
    with pytest.raises(ValueError, match="images.*rank 4"):
        jaxviz.occlude(_f, images[0], window=4)
    with pytest.raises(TypeError, match=r"images.*floating.*network.to_input\(images\)"):
        jaxviz.occlude(_f, (images * 255).astype(np.uint8), window=4)
    with pytest.raises(TypeError, match="images"):
        jaxviz.occlude(_f, [[1.0]], window=4)
    bad = images.copy()
    bad[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="images.*NaN"):
        jaxviz.occlude(_f, bad, window=4)
    with pytest.raises(ValueError, match="f: expected an output of shape \\(N"):
        jaxviz.occlude(lambda x: x.sum(0), images, window=4)  # drops the batch axis
    with pytest.raises(TypeError, match="f"):
        jaxviz.occlude(lambda x: (x, x), images, window=4)
    with pytest.raises(TypeError, match="f: expected a callable"):
        jaxviz.occlude("model", images, window=4)


def test_grid_can_be_written_to_a_memory_map(net, images, tmp_path):
    f, variables = net.layer_fn("fc1"), net.variables
    expected = jaxviz.occlude(f, images, params=variables, window=8, stride=8, units=[3, 4])
    mapped = np.lib.format.open_memmap(tmp_path / "grid.npy", "w+", np.float32, expected.grid.shape)
    result = jaxviz.occlude(f, images, params=variables, window=8, stride=8, units=[3, 4], grid_out=mapped)
    assert result.grid is mapped
    mapped.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "grid.npy"), expected.grid)
    with pytest.raises(ValueError, match="grid_out"):
        jaxviz.occlude(f, images, params=variables, window=8, stride=8, grid_out=np.zeros((3, 4, 4, 2), np.float32))


def test_boolean_units_are_a_mask_and_integral_sizes_are_accepted(images):
    full = jaxviz.occlude(_f, images, window=8, stride=8)
    masked = jaxviz.occlude(_f, images, window=8, stride=8, units=np.array([True, False, True]))
    assert masked.units == (0, 2)
    np.testing.assert_array_equal(masked.grid, full.grid[..., [0, 2]])  # elementwise f: no reassociation
    # numpy ints and integral floats are counts like any int
    assert jaxviz.occlude(_f, images, window=8, stride=8, chunk_size=np.int64(8)).chunk_size <= 8
    budget = jaxviz.occlude(_f, images, window=8, stride=8, memory_budget=1e8)
    assert budget.chunk_size == jaxviz.occlude(_f, images, window=8, stride=8, memory_budget=100_000_000).chunk_size


def test_a_torch_tensor_fill_is_named(images):
    class Tensor:  # stands in for torch.Tensor without importing torch
        pass

    Tensor.__module__ = "torch"
    with pytest.raises(TypeError, match=r"fill: .*got Tensor \(convert it with .numpy\(\) first\)"):
        jaxviz.occlude(_f, images, window=4, fill=Tensor())


# ------------------------------------------------------------------ the top images of units


@pytest.fixture(scope="module")
def dataset():
    images = make_uint8_images(16, seed=5)
    return images, np.arange(16) % 4


def _reference_f(model, layer):
    """The layer's units as one score each, written here: conv maps averaged over space."""
    def f(variables, x):
        out = jaxviz.forward(model, variables, x, layer=layer)
        return out.mean(axis=(1, 2)) if out.ndim == 4 else out
    return f


@pytest.mark.parametrize("layer, units", [("fc1", None), ("conv3", None), ("pool2", [6, 1, 6])])
def test_occlude_top_images_equals_occlusion_of_each_units_top_images(cnn, net, dataset, layer, units):
    model, variables = cnn
    images, labels = dataset
    scores = jaxviz.unit_scores(jaxviz.layer_features(net, images, layer=layer))
    study = jaxviz.study_units(scores, labels, 4, k=3, count=3, units=units)
    result = jaxviz.occlude_top_images(net, study, images, layer=layer, window=9, stride=6, fill=0.2)
    shown = study.units
    assert result.units == shown and len(shown) == 3
    assert result.images.shape == (3, 3, 32, 32, 3) and result.images.dtype == np.uint8
    assert result.heatmaps.shape == (3, 3, 5, 5) and result.pixel.shape == (3, 3, 32, 32)
    assert result.masked.shape == result.images.shape and result.masked.dtype == np.uint8
    f = _reference_f(model, layer)  # one function object: compiled once for all units
    for j, unit in enumerate(shown):
        top = study.top.indices[:, unit]
        np.testing.assert_array_equal(result.images[:, j], images[top])
        # the engine on this unit's own top images alone, every unit kept, then this unit's column
        want = jaxviz.occlude(f, images[top].astype(np.float32) / 255, params=variables, window=9, stride=6,
                              fill=0.2)
        assert_close(want.base[:, unit], study.top.values[:, unit], scale=want.base)
        assert_close(result.heatmaps[:, j], want.grid[..., unit], scale=want.base[:, unit], err_msg=f"unit {unit}")
        assert_close(result.pixel[:, j], want.pixel[..., unit], scale=want.base[:, unit], err_msg=f"unit {unit}")
        for k in range(3):
            mask = jaxviz.heatmap_mask(result.heatmaps[k, j], (32, 32))
            np.testing.assert_array_equal(result.masked[k, j], jaxviz.apply_mask(images[top[k]], mask))
    assert np.abs(result.heatmaps).max() > 0


def test_occlude_top_images_checks_its_arguments(cnn, net, dataset):
    images, labels = dataset
    scores = jaxviz.unit_scores(jaxviz.layer_features(net, images, layer="conv1"))  # 4 channels
    study = jaxviz.study_units(scores, labels, 4, k=2, units=[0, 3])
    with pytest.raises(ValueError, match="conv9"):
        jaxviz.occlude_top_images(net, study, images, layer="conv9")
    with pytest.raises(ValueError, match="layer: 'conv3' has 8 units, but the study scores 4"):
        jaxviz.occlude_top_images(net, study, images, layer="conv3")  # would occlude the wrong units
    with pytest.raises(ValueError, match="images: expected the 16 images the study was made on"):
        jaxviz.occlude_top_images(net, study, images[:10], layer="conv1")
    with pytest.raises(TypeError, match="images"):
        jaxviz.occlude_top_images(net, study, images.astype(np.float32), layer="conv1")
    with pytest.raises(TypeError, match="network: expected a jaxviz.Network"):
        jaxviz.occlude_top_images(cnn[0], study, images, layer="conv1")
    with pytest.raises(TypeError, match="study: expected a UnitStudy"):
        jaxviz.occlude_top_images(net, study.top, images, layer="conv1")
