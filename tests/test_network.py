"""Tests for jaxviz.models.network: one model interface, four adapters, checked against independent references."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.models.adapters import from_cnn, from_function, from_linen, from_nnx
from jaxviz.models.cnn import layers as cnn_layers
from jaxviz.models.network import InputSpec, LayerInfo, Network, resize_images

import dropout_nnx
from conftest import load_example
from numerics import assert_close

SMALL = (16, 16, 3)  # the ResNets pool globally, so any size works; small inputs compile fast
TOP = ("stem", "stage1", "stage2", "stage3", "pool", "head")  # disjoint subtrees covering all variables


def linen_into_nnx(module, linen_variables) -> None:
    """Copy the linen twin's variables into the nnx ``module``: linen's ``params`` and ``batch_stats``
    (BatchNorm's ``mean`` and ``var``) merged into nnx's pure-dict layout, which must take every leaf."""
    from flax import nnx

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
        return out

    state = nnx.state(module)
    pure = nnx.to_pure_dict(state)
    linen = merge(linen_variables["params"], linen_variables["batch_stats"])
    leaves = lambda tree: {"/".join(str(k.key) for k in p): np.shape(v)
                           for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    assert leaves(linen) == leaves(pure)  # the same paths and shapes: nothing left at nnx's init
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, linen))
    nnx.update(module, state)


def count(tree) -> int:
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def all_layers(net: Network, x) -> dict:
    """Every layer's truncated ``apply``, in one jitted program."""
    return jax.jit(lambda v, x: {n: net.apply(v, x, n) for n in net.layer_names})(net.variables, x)


def flops_and_convs(net: Network, layer: str) -> tuple[float, int]:
    """XLA's flop estimate and the number of convolutions of the compiled program of one layer."""
    x = jax.ShapeDtypeStruct((1, *net.input_spec.shape), jnp.float32)
    compiled = jax.jit(net.layer_fn(layer)).lower(net.variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]), compiled.as_text().count(" convolution(")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def linen_example():
    return load_example("resnet_linen")


@pytest.fixture(scope="module")
def nnx_example():
    return load_example("resnet_nnx")


@pytest.fixture(scope="module")
def linen_model(linen_example):
    return linen_example.build()


@pytest.fixture(scope="module")
def linen_net(linen_model, linen_example):
    module, variables = linen_model
    return from_linen(module, variables, input_shape=SMALL, class_names=linen_example.CLASS_NAMES,
                      apply_kwargs={"train": False})


@pytest.fixture(scope="module")
def nnx_module(nnx_example, linen_model):
    """The nnx twin with the linen twin's variables copied in: both compute the same function."""
    module = nnx_example.build()
    linen_into_nnx(module, linen_model[1])
    return module


@pytest.fixture(scope="module")
def nnx_net(nnx_module, nnx_example):
    return from_nnx(nnx_module, input_shape=SMALL, class_names=nnx_example.CLASS_NAMES)


@pytest.fixture(scope="module")
def x_small():
    return np.random.default_rng(0).uniform(0, 1, (3, *SMALL)).astype(np.float32)


@pytest.fixture(scope="module")
def linen_layers(linen_net, x_small):
    return all_layers(linen_net, x_small)


@pytest.fixture(scope="module")
def cnn_net(tiny_model, tiny_variables):
    return from_cnn(tiny_model, tiny_variables, tuple("abcdefghij"))


# A hand-written JAX model: 3x3 conv (4 ch) + ReLU -> global average pool -> dense (3 classes).

def tiny_variables_fn(channels: int = 3) -> dict:
    rng = np.random.default_rng(3)
    return {"conv": {"kernel": rng.normal(0, 0.3, (3, 3, channels, 4)).astype(np.float32),
                     "bias": rng.normal(0, 0.2, 4).astype(np.float32)},
            "dense": {"kernel": rng.normal(0, 0.5, (4, 3)).astype(np.float32),
                      "bias": rng.normal(0, 0.2, 3).astype(np.float32)}}


def tiny_apply(variables, x, layer):
    y = jax.lax.conv_general_dilated(x, variables["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + variables["conv"]["bias"])
    if layer == "conv":
        return y
    y = y.mean(axis=(1, 2))
    if layer == "gap":
        return y
    return y @ variables["dense"]["kernel"] + variables["dense"]["bias"]


def tiny_reference(variables, x) -> dict:
    """The same model in float64 numpy: the conv as nine shifted matrix products."""
    k, b = (np.asarray(variables["conv"][n], np.float64) for n in ("kernel", "bias"))
    n, h, w, _ = x.shape
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.maximum(sum(padded[:, i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3)) + b, 0)
    gap = conv.mean(axis=(1, 2))
    return {"conv": conv, "gap": gap, "dense": gap @ variables["dense"]["kernel"] + variables["dense"]["bias"]}


def make_function_net(input_shape=(8, 8, 3), apply=tiny_apply, **kwargs) -> Network:
    return from_function(apply, tiny_variables_fn(input_shape[-1]), layer_names=("conv", "gap", "dense"),
                         input_shape=input_shape, kernel_paths={"conv": ("conv", "kernel"),
                                                                "dense": ("dense", "kernel")}, **kwargs)


# --------------------------------------------------------------------------- InputSpec, resize


def test_default_input_spec_is_bitwise_pixel_over_255(cnn_net, tiny_images):
    spec = InputSpec(32, 32, 3)
    want = tiny_images.astype(np.float32) / np.float32(255.0)
    got = spec.to_input(tiny_images)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, cnn_net.to_input(tiny_images))
    # Under jit XLA turns "/ 255" into a multiplication, as in the shipped uint8 program: same program, same bits.
    shipped = jax.jit(lambda images: images.astype(jnp.float32) / 255.0)(tiny_images)
    np.testing.assert_array_equal(jax.jit(spec.to_input)(jnp.asarray(tiny_images)), shipped)


def test_cnn_uint8_fn_is_the_shipped_program(cnn_net, tiny_model, tiny_variables, tiny_images):
    got = cnn_net.uint8_fn("logits")(tiny_variables, tiny_images)
    shipped = jax.jit(lambda v, images: jaxviz.forward(tiny_model, v, images.astype(jnp.float32) / 255.0,
                                                        layer="logits"))
    np.testing.assert_array_equal(got, shipped(tiny_variables, tiny_images))


def test_input_spec_mean_std_against_numpy(tiny_images):
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    spec = InputSpec(32, 32, 3, scale=1 / 255, mean=mean, std=std)
    want = (tiny_images / 255.0 - np.array(mean)) / np.array(std)
    assert_close(spec.to_input(tiny_images), want)
    assert_close(np.asarray(jax.jit(spec.to_input)(jnp.asarray(tiny_images))), want)
    spec2 = InputSpec(32, 32, 3, scale=2 / 255, mean=(1, 1, 1))  # not 1/k: multiplies
    assert_close(spec2.to_input(tiny_images), tiny_images * (2 / 255) - 1)
    assert spec.shape == (32, 32, 3)


@pytest.mark.parametrize("kwargs, error", [
    ({"height": 0}, ValueError), ({"width": 2.5}, ValueError), ({"channels": True}, ValueError),
    ({"scale": 0}, ValueError), ({"mean": (0.5, 0.5)}, ValueError), ({"std": (1, 0, 1)}, ValueError),
    ({"dtype": np.int32}, TypeError),
])
def test_input_spec_validates(kwargs, error):
    args = {"height": 4, "width": 4, "channels": 3, **kwargs}
    with pytest.raises(error, match=next(iter(kwargs))):
        InputSpec(**args)


def test_check_images_says_what_to_pass(tiny_images):
    spec = InputSpec(64, 64, 3)
    with pytest.raises(TypeError, match="expected uint8.*model input"):
        spec.check_images(tiny_images.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"64x64.*got 32x32.*resize_images\(images, 64, 64\)"):
        spec.check_images(tiny_images)
    with pytest.raises(ValueError, match="pixels: expected shape"):
        spec.check_images(tiny_images[0], name="pixels")
    spec.check_images(resize_images(tiny_images, 64, 64))


def test_resize_images():
    ramp = np.broadcast_to(np.arange(0, 256, 8, dtype=np.uint8)[None, None, :, None], (2, 32, 32, 3)).copy()
    up = resize_images(ramp, 48, 64)
    assert up.shape == (2, 48, 64, 3) and up.dtype == np.uint8
    # bilinear interpolation keeps a linear ramp linear away from the borders
    centres = (np.arange(64) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[0, 10, 2:-2, 0], np.round(centres[2:-2] * 8), atol=1)
    constant = np.full((3, 20, 20, 1), 77, np.uint8)
    assert np.all(resize_images(constant, 7, 9) == 77)  # antialiased shrink keeps constants
    np.testing.assert_array_equal(resize_images(ramp, 32, 32), ramp)
    with pytest.raises(TypeError, match="images: expected uint8"):
        resize_images(ramp.astype(np.float32), 8, 8)
    with pytest.raises(ValueError, match="height"):
        resize_images(ramp, 0, 8)


# --------------------------------------------------------------------------- from_cnn


def test_cnn_every_layer_matches_forward(cnn_net, tiny_model, tiny_variables, tiny_images):
    x = cnn_net.to_input(tiny_images)
    assert cnn_net.layer_names == tiny_model.layer_names()
    for name, got in all_layers(cnn_net, x).items():
        assert_close(got, jaxviz.forward(tiny_model, tiny_variables, x, layer=name), err_msg=name)
    assert cnn_net.input_spec == InputSpec(32, 32, 3)
    assert cnn_net.is_classifier and cnn_net.class_names == tuple("abcdefghij")


def test_cnn_summary_counts_match_model_summary(cnn_net, tiny_model, tiny_variables):
    want = cnn_layers(tiny_model, tiny_variables)
    got = cnn_net.summary()
    assert [(r.name, r.output_shape, r.params, r.kind) for r in got] == \
           [(r.name, r.output_shape, r.params, r.kind) for r in want]
    assert all(isinstance(r, LayerInfo) for r in got)
    assert f"Total params: {sum(r.params for r in want):,}" in cnn_net.summary_table()
    assert cnn_net.num_params == count(tiny_variables)


def test_cnn_kernels(cnn_net, tiny_variables):
    np.testing.assert_array_equal(cnn_net.kernel("conv1"), tiny_variables["params"]["conv1"]["kernel"])
    assert cnn_net.conv_layers() == ("conv1", "conv2", "conv3", "conv4")
    for layer in ("pool1", "fc1"):
        with pytest.raises(ValueError, match="layers with conv kernels: conv1, conv2, conv3, conv4"):
            cnn_net.kernel(layer)


def test_cnn_layer_fn_works_with_occlude(cnn_net, tiny_model, tiny_variables, tiny_images):
    x = cnn_net.to_input(tiny_images[:2])
    got = jaxviz.occlude(cnn_net.layer_fn("fc1"), x, window=16, stride=16, params=cnn_net.variables)
    direct = functools.partial(jaxviz.forward, tiny_model, layer="fc1")
    want = jaxviz.occlude(direct, x, window=16, stride=16, params=tiny_variables)
    assert_close(got.grid, want.grid, scale=want.base)


def test_cnn_validates(tiny_model, tiny_variables):
    with pytest.raises(ValueError, match="class_names: layer 'logits' has 10 outputs, so expected 10 class names, got 3"):
        from_cnn(tiny_model, tiny_variables, ("a", "b", "c"))
    with pytest.raises(TypeError, match="model: expected a jaxviz.CNN"):
        from_cnn(object(), tiny_variables)
    with pytest.raises(ValueError, match="variables: "):
        from_cnn(tiny_model, {"params": {}})


# --------------------------------------------------------------------------- from_linen


def test_linen_layer_names_in_forward_order(linen_net):
    names = linen_net.layer_names
    assert len(names) == 42 and names[:4] == ("stem/conv", "stem/bn", "stem", "stage1/block0/conv1")
    assert names[-3:] == ("stage3", "pool", "head")
    for block in ("stage1/block1", "stage2/block0"):  # a block follows its sublayers
        assert max(i for i, n in enumerate(names) if n.startswith(block + "/")) < names.index(block)
    assert "stage2/block0/proj" in names and "stage1/block0/proj" not in names
    assert linen_net.layer_kinds["stage2/block0"] == "Block" and linen_net.name == "ResNet"


def test_linen_every_layer_matches_capture_intermediates(linen_net, linen_model, linen_layers, x_small):
    module, variables = linen_model
    logits, state = module.apply(variables, x_small, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    for name, got in linen_layers.items():
        want = inter
        for key in name.split("/"):
            want = want[key]
        assert_close(got, want["__call__"][0], err_msg=name)
        assert got.shape[1:] == linen_net.output_shape(name)
    assert_close(linen_layers["head"], logits)
    active = np.mean(np.asarray(linen_layers["stage2/block0/bn1"]) > 0)
    assert 0.1 < active < 0.9  # BN statistics are not trivial


def test_linen_output_shape_is_eval_shape_of_apply(linen_net):
    x = jax.ShapeDtypeStruct((1, *SMALL), jnp.float32)
    for name in ("stem", "stage2/block0/proj", "pool", "head"):
        assert jax.eval_shape(linen_net.layer_fn(name), linen_net.variables, x).shape[1:] == \
               linen_net.output_shape(name)


def test_linen_summary_counts(linen_model, linen_net):
    module, variables = linen_model
    top = from_linen(module, variables, input_shape=SMALL, layers=TOP)
    assert top.layer_names == TOP
    rows = top.summary()
    assert sum(r.params for r in rows) == count(variables) == top.num_params
    conv = {r.name: r.params for r in linen_net.summary()}
    assert conv["stage1/block0/conv1"] == 3 * 3 * 16 * 16
    assert conv["stem/bn"] == 4 * 16  # scale, bias, mean, var
    assert conv["stem"] == 3 * 3 * 3 * 16 + 4 * 16
    reordered = from_linen(module, variables, input_shape=SMALL, layers=("head", "stem"))
    assert reordered.layer_names == ("head", "stem")
    with pytest.raises(ValueError, match="layers: expected distinct names from stem/conv"):
        from_linen(module, variables, input_shape=SMALL, layers=("stem", "nope"))


def test_linen_kernels(linen_net, linen_model):
    params = linen_model[1]["params"]
    np.testing.assert_array_equal(linen_net.kernel("stage1/block0/conv1"),
                                  params["stage1"]["block0"]["conv1"]["kernel"])
    assert linen_net.kernel("stem/conv").shape == (3, 3, 3, 16)
    assert len(linen_net.conv_layers()) == 15 and linen_net.conv_layers()[0] == "stem/conv"
    assert linen_net.kernel_paths["head"] == ("params", "head", "kernel")  # dense: recorded, not a conv
    for layer in ("stem", "head", "pool"):
        with pytest.raises(ValueError, match="layers with conv kernels: stem/conv, stage1/block0/conv1"):
            linen_net.kernel(layer)


def test_linen_validates(linen_model):
    module, variables = linen_model
    with pytest.raises(ValueError, match="class_names: the model output has 10 outputs, so expected 10"):
        from_linen(module, variables, input_shape=SMALL, class_names=("a", "b"))
    with pytest.raises(ValueError) as info:  # 1-channel images do not fit the stem's kernel
        from_linen(module, variables, input_shape=(16, 16, 1))
    message = str(info.value)
    assert message.startswith("module: running it on a 16x16x1 input failed with ScopeParamShapeError: ")
    assert "\n" not in message and info.value.__cause__ is not None
    with pytest.raises(TypeError, match="module: expected a flax.linen.Module"):
        from_linen(lambda x: x, variables, input_shape=SMALL)
    with pytest.raises(ValueError, match=r"apply_kwargs: expected no \['mutable'\]"):
        from_linen(module, variables, input_shape=SMALL, apply_kwargs={"mutable": True})


# --------------------------------------------------------------------------- from_nnx


def test_nnx_matches_linen_twin_at_every_layer(nnx_net, linen_net, linen_layers, x_small):
    assert nnx_net.layer_names == linen_net.layer_names
    assert nnx_net.feature_layer == linen_net.feature_layer == "pool"  # the layer before the head: the report's
    assert nnx_net.class_names == linen_net.class_names
    got = all_layers(nnx_net, x_small)
    for name in linen_net.layer_names:
        assert_close(got[name], linen_layers[name], err_msg=name)
        assert got[name].shape[1:] == nnx_net.output_shape(name)
    assert [(r.name, r.output_shape, r.params) for r in nnx_net.summary()] == \
           [(r.name, r.output_shape, r.params) for r in linen_net.summary()]


def test_nnx_matches_the_modules_own_calls(nnx_net, nnx_module, x_small):
    m = nnx_module
    stem = m.stem(x_small)
    want = {"stem/conv": m.stem.conv(x_small), "stem": stem, "stage1/block0": m.stage1.block0(stem),
            "stage1": m.stage1(stem), "head": m(x_small)}
    for name, value in want.items():
        assert_close(jax.jit(nnx_net.layer_fn(name))(nnx_net.variables, x_small), value, err_msg=name)


def test_nnx_state_is_an_argument_not_a_constant(nnx_net, x_small):
    jaxpr = jax.make_jaxpr(nnx_net.layer_fn("head"))(nnx_net.variables, x_small)
    assert sum(np.size(c) for c in jaxpr.consts) < 100
    doubled = jax.tree_util.tree_map(lambda a: a * 2, nnx_net.variables)
    fn = jax.jit(nnx_net.layer_fn("stem/conv"))
    assert_close(fn(doubled, x_small), 2 * fn(nnx_net.variables, x_small))


def test_nnx_leaves_the_users_module_alone(nnx_example, linen_model, linen_layers, x_small):
    module = nnx_example.build()
    linen_into_nnx(module, linen_model[1])
    module.train()  # from_nnx analyses an eval-mode copy
    before = jax.tree_util.tree_map(np.asarray, jax.tree_util.tree_leaves(module))
    net = from_nnx(module, input_shape=SMALL)
    assert_close(jax.jit(net.layer_fn("stage2"))(net.variables, x_small), linen_layers["stage2"])
    assert module.stem.bn.use_running_average is False and type(module.stage1.block0.conv1).__name__ == "Conv"
    after = jax.tree_util.tree_leaves(module)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_nnx_example_draws_its_own_weights(nnx_example, x_small):
    """``build()`` needs nothing from the linen twin: nnx's initialisers from ``nnx.Rngs(seed)``, and random
    batch-norm statistics so that eval-mode batch norm is no near-identity."""
    from flax import nnx

    a, b, other = nnx_example.build(), nnx_example.build(), nnx_example.build(seed=1)
    assert not hasattr(nnx_example, "random_weight")
    pure = lambda m: jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(m)))
    assert all(np.array_equal(u, v) for u, v in zip(pure(a), pure(b)))  # seeded
    assert not np.array_equal(a.stem.conv.kernel.get_value(), other.stem.conv.kernel.get_value())
    bn = a.stage2.block0.bn1
    assert bn.use_running_average is True
    assert np.abs(bn.mean.get_value()).max() > 0.05 and np.all(bn.var.get_value() >= 0.5)
    assert not np.allclose(bn.var.get_value(), 1) and not np.allclose(bn.scale.get_value(), 1)
    net = from_nnx(a, input_shape=SMALL)
    active = np.mean(np.asarray(jax.jit(net.layer_fn("stage2/block0/bn1"))(net.variables, x_small)) > 0)
    assert 0.1 < active < 0.9


def test_nnx_kernels_and_validation(nnx_net, linen_net, nnx_module):
    np.testing.assert_array_equal(nnx_net.kernel("stage2/block0/proj"), linen_net.kernel("stage2/block0/proj"))
    assert nnx_net.conv_layers() == linen_net.conv_layers()
    with pytest.raises(ValueError, match="class_names: the model output has 10 outputs"):
        from_nnx(nnx_module, input_shape=SMALL, class_names=("a",))
    with pytest.raises(ValueError, match=r"module: running it on a 16x16x2 input failed with \w+"):
        from_nnx(nnx_module, input_shape=(16, 16, 2))
    with pytest.raises(TypeError, match="module: expected a flax.nnx.Module"):
        from_nnx(object(), input_shape=SMALL)


def test_nnx_lists_of_modules_get_numbered_names():
    from flax import nnx

    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([nnx.Linear(3, 5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs)])
            self.seq = nnx.Sequential(nnx.Linear(4, 2, rngs=rngs))

        def __call__(self, x):
            x = x.mean(axis=(1, 2))
            for block in self.blocks:
                x = nnx.relu(block(x))
            return self.seq(x)

    model = Mlp(nnx.Rngs(0))
    net = from_nnx(model, input_shape=(4, 4, 3))
    assert net.layer_names == ("blocks/0", "blocks/1", "seq/layers/0", "seq")
    x = np.random.default_rng(1).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    assert_close(jax.jit(net.layer_fn("blocks/0"))(net.variables, x), model.blocks[0](x.mean(axis=(1, 2))))
    assert_close(jax.jit(net.layer_fn("seq"))(net.variables, x), model(x))
    assert net.kernel_paths["blocks/1"] == ("blocks", 1, "kernel") and net.conv_layers() == ()


# --------------------------------------------------------------------------- dead code


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
def test_truncated_program_drops_later_layers(flavour, linen_net, nnx_net):
    net = linen_net if flavour == "linen" else nnx_net
    early_flops, early_convs = flops_and_convs(net, "stem/conv")
    mid_flops, mid_convs = flops_and_convs(net, "stage1")
    full_flops, full_convs = flops_and_convs(net, "head")
    assert (early_convs, mid_convs, full_convs) == (1, 5, 15)
    assert early_flops * 10 < full_flops and early_flops < mid_flops < full_flops
    # a 16x16, 3 -> 16 channel 3x3 "SAME" conv: 2 * 16*16*16 * 27 flops, less the taps in the zero padding
    assert 0.8 * 2 * 16 * 16 * 16 * 27 <= early_flops <= 1.5 * 2 * 16 * 16 * 16 * 27


# --------------------------------------------------------------------------- from_function, caching


def test_function_every_layer_matches_numpy():
    net = make_function_net(class_names=("x", "y", "z"))
    x = np.random.default_rng(2).uniform(size=(5, 8, 8, 3)).astype(np.float32)
    want = tiny_reference(net.variables, x)
    for name, got in all_layers(net, x).items():
        assert_close(got, want[name], err_msg=name)
    assert net.output_shape("conv") == (8, 8, 4) and net.output_shape("dense") == (3,)
    np.testing.assert_array_equal(net.kernel("conv"), net.variables["conv"]["kernel"])
    assert net.conv_layers() == ("conv",)
    assert [r.params for r in net.summary()] == [3 * 3 * 3 * 4 + 4, 0, 4 * 3 + 3]
    assert net.name == "tiny_apply" and "Total params: 127" in net.summary_table()


def test_function_at_224():
    net = make_function_net((224, 224, 3))
    assert net.output_shape("conv") == (224, 224, 4)
    assert jax.eval_shape(net.uint8_fn("dense"), net.variables,
                          jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8)).shape == (2, 3)
    big = resize_images(np.zeros((1, 32, 32, 3), np.uint8), 224, 224)
    net.input_spec.check_images(big)


def test_layer_fn_is_cached_and_uint8_fn_does_not_retrace():
    traces = []

    def counted(variables, x, layer):
        traces.append(layer)
        return tiny_apply(variables, x, layer)

    net = make_function_net(apply=counted)
    assert net.layer_fn("gap") is net.layer_fn("gap") and net.layer_fn("gap") is not net.layer_fn("conv")
    assert net.uint8_fn("gap") is net.uint8_fn("gap")
    images = np.random.default_rng(4).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    traces.clear()
    first = net.uint8_fn("gap")(net.variables, images)
    second = net.uint8_fn("gap")(net.variables, images)
    assert traces == ["gap"]
    np.testing.assert_array_equal(first, second)
    assert_close(first, tiny_reference(net.variables, images / np.float32(255))["gap"])
    with pytest.raises(TypeError, match="uint8"):
        net.uint8_fn("gap")(net.variables, images.astype(np.float32))


def test_function_validates():
    def broken(variables, x, layer):
        raise RuntimeError("boom\nmore detail")

    with pytest.raises(ValueError) as info:
        make_function_net(apply=broken)
    assert str(info.value) == "apply: running it on a 8x8x3 input failed with RuntimeError: boom"
    with pytest.raises(ValueError, match="class_names: layer 'dense' has 3 outputs, so expected 3 class names, got 2"):
        make_function_net(class_names=("a", "b"))
    with pytest.raises(ValueError, match=r"class_names: given, so layer 'conv' must have shape \(N, classes\)"):
        from_function(tiny_apply, tiny_variables_fn(), layer_names=("gap", "conv"), input_shape=(8, 8, 3),
                      class_names=("a",) * 4)
    with pytest.raises(ValueError, match="apply: expected \\(N, ...\\) activations for layer 'gap'"):
        from_function(lambda v, x, layer: x.mean(), {}, layer_names=("gap",), input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="kernel_paths"):
        from_function(tiny_apply, tiny_variables_fn(), layer_names=("conv",), input_shape=(8, 8, 3),
                      kernel_paths={"conv": ("conv", "nope")})
    with pytest.raises(TypeError, match="layer_names"):
        from_function(tiny_apply, {}, layer_names="conv", input_shape=(8, 8, 3))


@pytest.mark.parametrize("shape", [(8, 8), (0, 8, 3), (8.0, 8, 3), "88", (8, 8, 3, 1), None])
def test_input_shape_is_checked(shape):
    with pytest.raises(ValueError, match="input_shape: expected \\(height, width, channels\\)"):
        from_function(tiny_apply, tiny_variables_fn(), layer_names=("conv",), input_shape=shape)


def test_unknown_and_non_str_layers(cnn_net):
    net = make_function_net()
    with pytest.raises(ValueError, match="layer: unknown layer 'fc9'; expected one of conv, gap, dense"):
        net.layer_fn("fc9")
    with pytest.raises(TypeError, match="layer: expected a layer name \\(str\\), got int"):
        net.output_shape(0)
    with pytest.raises(ValueError, match="unknown layer"):
        cnn_net.kernel("conv9")
    with pytest.raises(TypeError, match="layer"):
        cnn_net.uint8_fn(None)


# --------------------------------------------------------------------------- nnx modules that keep an RNG stream


def _check_engines(net, ref, images, tmp_path):
    """saliency, RISE, occlusion and a dataset run of ``net``'s output, against ``ref(x)`` (the same function
    with nothing but ``x`` as argument)."""
    x = net.to_input(images)
    f, targets = net.layer_fn(net.output_layer), np.arange(len(x)) % 3
    want = jax.grad(lambda x: ref(x)[np.arange(len(x)), targets].sum())(jnp.asarray(x))
    assert_close(jaxviz.saliency(f, x, params=net.variables, targets=targets).attributions, np.abs(want))
    assert_close(jaxviz.rise(f, x, params=net.variables, num_masks=8, cells=2).maps,
                 jaxviz.rise(ref, x, num_masks=8, cells=2).maps)
    occ = jaxviz.occlude(f, x, params=net.variables, window=4, stride=4)
    assert_close(occ.grid, jaxviz.occlude(ref, x, window=4, stride=4).grid, scale=occ.base)
    run = jaxviz.run_dataset(net, images, tmp_path / "run", window=4, stride=4, progress=False)
    assert run.complete
    assert_close(run.aggregates["base"], np.asarray(ref(x)))


def test_variables_with_a_typed_prng_key_can_be_analysed(tmp_path):
    """Every engine plans from the variables' shapes and dtypes, and the dataset run hashes them: a typed
    key leaf (what an nnx RNG stream holds) used to fail all of them."""
    w = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    variables = {"w": w, "rng": {"key": jax.random.key(7), "count": jnp.uint32(0)}}

    def apply(variables, x, layer):
        return x.mean((1, 2)) @ variables["w"]

    net = from_function(apply, variables, layer_names=["out"], input_shape=(8, 8, 3), class_names=("a", "b", "c"))
    images = np.random.default_rng(3).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    _check_engines(net, lambda x: x.mean((1, 2)) @ w, images, tmp_path)


def test_nnx_dropout_model_can_be_analysed(tmp_path):
    """The eval-mode module closed over as a constant is the reference; the RNG state is no variable, so
    the randomization test (which draws new variables) runs too."""
    from flax import nnx

    module = dropout_nnx.build()
    net = from_nnx(module, input_shape=(8, 8, 3), class_names=("a", "b", "c"))
    assert not any(jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)
                   for leaf in jax.tree_util.tree_leaves(net.variables))
    ref_module = nnx.merge(*nnx.split(module))
    ref_module.eval()
    images = np.random.default_rng(3).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    _check_engines(net, lambda x: ref_module(x), images, tmp_path)
    check = jaxviz.randomization_test(net, images, methods=("saliency",))
    assert check.layers and np.isfinite(check.correlations["saliency"]).any()


def test_nnx_summary_counts_no_rng_state():
    net = from_nnx(dropout_nnx.build(), input_shape=(8, 8, 3))
    rows = {r.name: r.params for r in net.summary()}
    assert rows == {"conv": 3 * 3 * 3 * 4 + 4, "drop": 0, "fc": 4 * 3 + 3}
    assert net.num_params == sum(rows.values())


def test_linen_dict_output_with_class_names_says_what_is_wrong():
    """It used to say "? outputs, so expected ? class names"."""
    import flax.linen as nn

    class TwoHeads(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(4, (3, 3), name="conv")(x)
            return {"logits": nn.Dense(2, name="head")(h.mean((1, 2))), "aux": h}

    module = TwoHeads()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"^class_names: .* one \(N, classes\) array; it returns a dict of 2 arrays "
                                         r"\(\['aux'\]: \(2, 8, 8, 4\), \['logits'\]: \(2, 2\)\), which is not "
                                         r"supported: wrap the module"):
        from_linen(module, variables, input_shape=(8, 8, 3), class_names=("a", "b"))
    assert from_linen(module, variables, input_shape=(8, 8, 3)).layer_names == ("conv", "head")


def test_num_units_is_the_last_axis(cnn_net, tiny_model, tiny_images):
    # the tiny CNN: conv layers have their block's channels, fc1 the hidden width, logits the classes
    want = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 16, "logits": 10}
    for layer, units in want.items():
        assert cnn_net.num_units(layer) == units, layer
    x = cnn_net.to_input(tiny_images[:2])
    for layer in cnn_net.layer_names:  # as many as score_fn gives
        assert cnn_net.num_units(layer) == cnn_net.score_fn(layer)(cnn_net.variables, x).shape[1], layer
    with pytest.raises(ValueError, match="layer"):
        cnn_net.num_units("nope")


def test_num_units_of_other_shapes():
    # per image: a scalar (1 unit), a (5, 3) sequence (3 units, not 15), a (2, 2, 2, 6) volume (6)
    outputs = {"scalar": lambda x: x.sum((1, 2, 3)), "seq": lambda x: x[:, :5, 0, :],
               "vol": lambda x: jnp.tile(x[:, :2, :2, None, :1], (1, 1, 1, 2, 6))}
    net = from_function(lambda v, x, layer: outputs[layer](x), {}, layer_names=tuple(outputs), input_shape=(8, 8, 3))
    assert [net.num_units(layer) for layer in outputs] == [1, 3, 6]
    x = net.to_input(np.zeros((2, 8, 8, 3), np.uint8))
    for layer in outputs:
        assert net.score_fn(layer)(net.variables, x).shape == (2, net.num_units(layer))
