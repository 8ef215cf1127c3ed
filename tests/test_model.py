"""Tests for jaxviz.models.cnn, and its ``Network`` (``from_cnn``), against an independent plain-numpy
re-implementation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models.adapters import from_cnn
from jaxviz.models.cnn import CNN, check_layer, forward, init_variables, layers
from jaxviz.models.network import LayerInfo

from numerics import assert_close, max_rel_error

TINY_LAYERS = ("conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "flatten", "fc1", "logits")
BN_EPS = 1e-5  # flax.linen.BatchNorm's default epsilon


# --- independent reference: the forward pass from the raw variables ---------

def ref_forward(xp, model: CNN, variables: dict, x) -> dict:
    """Every named layer's activations of a full inference forward pass.

    ``xp`` is numpy (run in float64) or jax.numpy (differentiable by plain
    autodiff). The convolution is nine shifted matrix products ("SAME",
    cross-correlation), batch norm uses the running statistics, max pooling
    is reshape + max, flatten is row-major over (h, w, c).
    """
    params, stats = variables["params"], variables["batch_stats"]
    out = {}
    conv = 0
    for block, _ in enumerate(model.widths):
        for _ in range(model.convs_per_block):
            conv += 1
            name = f"conv{conv}"
            kernel = params[name]["kernel"]
            n, h, w, c = x.shape
            padded = xp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            y = sum(padded[:, i:i + h, j:j + w, :] @ kernel[i, j] for i in range(3) for j in range(3))
            bn, st = params[f"{name}_bn"], stats[f"{name}_bn"]
            y = (y - st["mean"]) / xp.sqrt(st["var"] + BN_EPS) * bn["scale"] + bn["bias"]
            x = out[name] = xp.maximum(y, 0)
        n, h, w, c = x.shape
        x = out[f"pool{block + 1}"] = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = out["flatten"] = x.reshape(x.shape[0], -1)
    x = out["fc1"] = xp.maximum(x @ params["fc1"]["kernel"] + params["fc1"]["bias"], 0)
    out["logits"] = x @ params["logits"]["kernel"] + params["logits"]["bias"]
    return out


def as_float64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


rel_err = max_rel_error  # max |got - want| / max |want|: float32 reassociation error scales with the values


@pytest.fixture(scope="module")
def net(tiny_model, tiny_variables):
    return from_cnn(tiny_model, tiny_variables)


@pytest.fixture(scope="module")
def x(net, tiny_images):
    return net.to_input(tiny_images)


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_variables, x):
    return ref_forward(np, tiny_model, as_float64(tiny_variables), x.astype(np.float64))


@pytest.fixture(scope="module")
def jit_forward():
    return jax.jit(forward, static_argnums=0, static_argnames="layer")


# --- layer names --------------------------------------------------------------

def test_layer_names_unique_and_in_forward_order(tiny_model, net):
    names = tiny_model.layer_names()
    assert names == TINY_LAYERS
    assert len(set(names)) == len(names)
    assert net.layer_names == TINY_LAYERS
    assert (net.output_layer, net.feature_layer) == ("logits", "fc1")
    one_conv = CNN(widths=(4, 8, 16), convs_per_block=1, hidden=16)
    assert one_conv.layer_names() == (
        "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "flatten", "fc1", "logits")


def test_network_input_is_pixels_over_255(net, tiny_images, x):
    # the notebook's X.astype("float32") / 255, and the same numpy division: bitwise equal
    assert net.input_spec.shape == (32, 32, 3)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, tiny_images.astype(np.float32) / 255)


def test_every_conv_and_dense_layer_has_params(tiny_model, tiny_variables):
    params = tiny_variables["params"]
    for name in TINY_LAYERS:
        if name.startswith(("conv", "fc", "logits")):
            assert name in params
        if name.startswith("conv"):
            assert f"{name}_bn" in params and f"{name}_bn" in tiny_variables["batch_stats"]


# --- forward vs the reference -------------------------------------------------

def test_reference_is_not_degenerate(reference):
    # The comparisons below would be weak if ReLUs were all off or all on.
    for name in ("conv1", "conv4", "fc1"):
        active = np.mean(reference[name] > 0)
        assert 0.05 < active < 0.95, (name, active)


def test_logits_match_reference(tiny_model, tiny_variables, x, reference, jit_forward):
    assert rel_err(jit_forward(tiny_model, tiny_variables, x), reference["logits"]) < 1e-5
    assert rel_err(jit_forward(tiny_model, tiny_variables, x, layer=None), reference["logits"]) < 1e-5


@pytest.mark.parametrize("layer", TINY_LAYERS)
def test_truncated_forward_matches_reference_intermediate(tiny_model, tiny_variables, x, reference,
                                                          jit_forward, layer):
    got = jit_forward(tiny_model, tiny_variables, x, layer=layer)
    assert rel_err(got, reference[layer]) < 1e-5


@pytest.mark.parametrize("layer", TINY_LAYERS)
def test_network_layer_and_uint8_functions_match_reference(net, tiny_variables, tiny_images, x, reference, layer):
    fn = net.layer_fn(layer)
    assert fn is net.layer_fn(layer) and net.uint8_fn(layer) is net.uint8_fn(layer)  # cached: one program
    assert rel_err(jax.jit(fn)(tiny_variables, x), reference[layer]) < 1e-5
    assert rel_err(net.uint8_fn(layer)(tiny_variables, tiny_images), reference[layer]) < 1e-5
    assert net.output_shape(layer) == reference[layer].shape[1:]


def test_truncated_forward_matches_flax_captured_intermediates(tiny_model, tiny_variables, x):
    logits, state = tiny_model.apply(tiny_variables, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    for name in ("conv1", "conv2", "conv3", "conv4"):
        want = jax.nn.relu(inter[f"{name}_bn"]["__call__"][0])  # conv layers are reported post-ReLU
        assert_close(forward(tiny_model, tiny_variables, x, layer=name), want, err_msg=name)
    assert_close(forward(tiny_model, tiny_variables, x, layer="fc1"), jax.nn.relu(inter["fc1"]["__call__"][0]))
    assert_close(forward(tiny_model, tiny_variables, x), inter["logits"]["__call__"][0])
    assert_close(forward(tiny_model, tiny_variables, x), logits)


@pytest.mark.parametrize("layer, convs", [("conv1", 1), ("conv2", 2), ("pool1", 2), ("conv3", 3),
                                          ("fc1", 4), ("logits", 4)])
def test_truncated_forward_does_not_trace_later_layers(tiny_model, tiny_variables, x, layer, convs):
    jaxpr = jax.make_jaxpr(lambda v, x: forward(tiny_model, v, x, layer=layer))(tiny_variables, x[:1])
    text = str(jaxpr)
    assert text.count("conv_general_dilated") == convs
    assert ("dot_general" in text) == (layer in ("fc1", "logits"))


def test_forward_unknown_layer_raises(tiny_model, tiny_variables, x):
    # Regression guard: an unknown name must not silently return the logits.
    with pytest.raises(ValueError, match="conv99"):
        forward(tiny_model, tiny_variables, x[:1], layer="conv99")
    with pytest.raises(ValueError, match="Conv1"):
        forward(tiny_model, tiny_variables, x[:1], layer="Conv1")


def test_check_layer(tiny_model, net):
    check_layer(tiny_model, None)
    for name in TINY_LAYERS:
        check_layer(tiny_model, name)
        net.check_layer(name)
    with pytest.raises(ValueError, match="pool3"):
        check_layer(tiny_model, "pool3")
    with pytest.raises(TypeError):
        check_layer(tiny_model, 3)
    with pytest.raises(ValueError, match="pool3"):
        net.check_layer("pool3")
    with pytest.raises(TypeError):
        net.check_layer(3)
    with pytest.raises(TypeError):
        net.check_layer(None)  # a Network has no implicit default layer
    with pytest.raises(ValueError, match="conv7"):
        net.layer_fn("conv7")


def test_forward_is_vmappable(tiny_model, tiny_variables, x):
    xs = x[:6].reshape(2, 3, 32, 32, 3)
    for layer in (None, "pool1", "fc1"):
        fn = jax.jit(jax.vmap(lambda x, layer=layer: forward(tiny_model, tiny_variables, x, layer=layer)))
        got = np.asarray(fn(xs))
        want = np.stack([np.asarray(forward(tiny_model, tiny_variables, xi, layer=layer)) for xi in xs])
        assert got.shape == want.shape
        assert_close(got, want)


def test_init_variables_are_deterministic_and_key_dependent(tiny_model):
    a = init_variables(tiny_model, jax.random.key(3))
    b = init_variables(tiny_model, jax.random.key(3))
    c = init_variables(tiny_model, jax.random.key(4))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda p, q: bool(jnp.array_equal(p, q)), a, b))
    assert not np.array_equal(a["params"]["conv1"]["kernel"], c["params"]["conv1"]["kernel"])


# --- summary ------------------------------------------------------------------

# Hand-counted: conv = 3*3*in*out kernel + 4*out (BN scale, bias, mean, var).
TINY_PARAMS = {"conv1": 3 * 3 * 3 * 4 + 16, "conv2": 3 * 3 * 4 * 4 + 16, "pool1": 0,
               "conv3": 3 * 3 * 4 * 8 + 32, "conv4": 3 * 3 * 8 * 8 + 32, "pool2": 0, "flatten": 0,
               "fc1": 8 * 8 * 8 * 16 + 16, "logits": 16 * 10 + 10}
KINDS = {"conv": "Conv3x3+BN+ReLU", "pool": "MaxPool2x2", "flatten": "Flatten", "fc": "Dense+ReLU", "logits": "Dense"}


def test_summary_shapes_and_params(tiny_model, tiny_variables, net, reference):
    rows = net.summary()
    assert [r.name for r in rows] == list(TINY_LAYERS)
    for r in rows:
        assert isinstance(r, LayerInfo)
        assert r.output_shape == reference[r.name].shape[1:], r
        assert r.params == TINY_PARAMS[r.name], r
        assert r.kind == KINDS[r.name.rstrip("0123456789")], r
    # The CNN's own table (shown by Network.summary) agrees, also from shapes only, without variables.
    cnn_rows = layers(tiny_model, tiny_variables)
    assert [(r.name, r.kind, r.output_shape, r.params) for r in cnn_rows] == \
           [(r.name, r.kind, r.output_shape, r.params) for r in rows]
    assert layers(tiny_model) == cnn_rows


def test_summary_table_names_and_total(tiny_variables, net):
    table = net.summary_table()
    total = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tiny_variables))
    assert total == sum(TINY_PARAMS.values()) == 9590 == net.num_params
    for name in TINY_LAYERS:
        assert f"\n{name} " in table
    assert table.rstrip().endswith(f"Total params: {total:,}")
    assert "(None, 8, 8, 8)" in table and "(None, 10)" in table and "Conv3x3+BN+ReLU" in table


def test_summary_default_model_total():
    # The notebook-sized default model: count from the variables tree independently.
    model = CNN()
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    total = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))
    net = from_cnn(model, shapes)  # shapes are enough for a summary
    assert sum(r.params for r in net.summary()) == total == net.num_params
    assert sum(r.params for r in layers(model)) == total
    assert f"Total params: {total:,}" in net.summary_table()
    assert net.summary()[-2].output_shape == (512,)


# --- conv kernels -------------------------------------------------------------

def test_network_kernel(tiny_variables, net):
    channels = {"conv1": (3, 4), "conv2": (4, 4), "conv3": (4, 8), "conv4": (8, 8)}
    assert net.conv_layers() == tuple(channels)
    for name, (cin, cout) in channels.items():
        k = net.kernel(name)
        assert k.shape == (3, 3, cin, cout) and k.dtype == np.float32
        np.testing.assert_array_equal(k, np.asarray(tiny_variables["params"][name]["kernel"]))


@pytest.mark.parametrize("layer", ["fc1", "pool1", "logits", "conv5", "nope"])
def test_network_kernel_rejects_non_conv_and_unknown_layers(net, layer):
    with pytest.raises(ValueError, match=repr(layer)):
        net.kernel(layer)


def test_model_gradients_match_plain_autodiff_reference(tiny_model, tiny_variables, x):
    """Gradients through the whole model equal autodiff through the jax.numpy
    reference (shifted matmuls, no lax.conv)."""
    cotangent = jax.random.normal(jax.random.key(5), (x.shape[0], 10))
    stats = tiny_variables["batch_stats"]

    def loss(params):
        return jnp.sum(forward(tiny_model, {"params": params, "batch_stats": stats}, x) * cotangent)

    def loss_ref(params):
        variables = {"params": params, "batch_stats": stats}
        return jnp.sum(ref_forward(jnp, tiny_model, variables, jnp.asarray(x))["logits"] * cotangent)

    grads = jax.jit(jax.grad(loss))(tiny_variables["params"])
    grads_ref = jax.jit(jax.grad(loss_ref))(tiny_variables["params"])
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    flat_ref = jax.tree_util.tree_leaves(grads_ref)
    assert len(flat) == len(flat_ref)
    for (path, g), g_ref in zip(flat, flat_ref):
        assert rel_err(g, g_ref) < 1e-4, jax.tree_util.keystr(path)
