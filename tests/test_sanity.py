"""The model-randomization sanity check: a linear model whose answer is known, the randomized parameter
sets themselves, vmapped sets equal to one set at a time, each adapter's initializer, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

import jaxviz
from jaxviz.evaluation.sanity import randomization_layers, randomized_variables, spearman

from conftest import make_tiny_model, make_uint8_images, randomize_variables

H, W, C, K = 6, 5, 3, 4


def _linear_apply(variables, x, layer):
    hidden = x.reshape(x.shape[0], -1) @ variables["first"]["w"]
    return hidden if layer == "first" else hidden @ variables["second"]["w"]


def _linear_init(key):
    k1, k2 = jax.random.split(key)
    return {"first": {"w": jax.random.normal(k1, (H * W * C, 7))}, "second": {"w": jax.random.normal(k2, (7, K))}}


@pytest.fixture(scope="module")
def linear_net():
    trained = jax.tree_util.tree_map(lambda a: a * 0.5 + 0.1, _linear_init(jax.random.key(42)))
    return jaxviz.from_function(_linear_apply, trained, layer_names=("first", "second"), input_shape=(H, W, C),
                                class_names=[str(k) for k in range(K)], init=_linear_init)


def test_linear_model_saliency_correlation_is_that_of_the_weights(linear_net):
    """Saliency of a linear model is |W_t| whatever the image, so the test's answer is known: the Spearman
    correlation of |W_t| (channels summed) with the randomized model's |W'_t|."""
    images = make_uint8_images(3, 0, size=H)[:, :, :W]
    result = jaxviz.randomization_test(linear_net, images, methods=("saliency", "ixg"))
    assert result.layers == ("second", "first") and result.initializer == "model"
    trained = linear_net.variables
    fresh = _linear_init(jax.random.key(0))
    logits = np.asarray(linear_net.apply(trained, linear_net.to_input(images), "second"))
    np.testing.assert_array_equal(result.targets, logits.argmax(-1))
    cascade = [{"first": trained["first"], "second": fresh["second"]}, fresh]  # top layer first, then both
    for j, variables in enumerate(cascade):
        for i, t in enumerate(result.targets):
            def saliency_map(v, t=t):
                w = np.asarray(v["first"]["w"] @ v["second"]["w"])[:, t].reshape(H, W, C)
                return np.abs(w).sum(-1).ravel()

            want = spearmanr(saliency_map(trained), saliency_map(variables)).statistic
            assert result.correlations["saliency"][j, i] == pytest.approx(want, abs=1e-5)
    assert result.correlations["saliency"].shape == (2, 3)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (3, 20)).astype(float)  # many ties
    others = rng.integers(0, 4, (2, 3, 20)).astype(float)
    got = spearman(ref, others)
    for j in range(2):
        for i in range(3):
            assert got[j, i] == pytest.approx(spearmanr(ref[i], others[j, i]).statistic)
    assert np.isnan(spearman(np.ones((1, 5)), others[:, :1, :5])).all()  # a constant map: undefined


@pytest.fixture(scope="module")
def tiny_net():
    model = make_tiny_model()
    variables = randomize_variables(jaxviz.init_variables(model, jax.random.key(0)), seed=0)
    return jaxviz.from_cnn(model, variables, [str(i) for i in range(10)])


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_randomized_sets_replace_exactly_the_chosen_layers(tiny_net, mode):
    layers = randomization_layers(tiny_net)
    assert layers == ("logits", "fc1", "conv4", "conv3", "conv2", "conv1")
    stacked, initializer = randomized_variables(tiny_net, layers, mode=mode, seed=3)
    fresh = tiny_net.init(jax.random.key(3))
    assert initializer == "model"
    for j in range(len(layers) + 1):
        chosen = set() if j == 0 else set(layers[:j]) if mode == "cascading" else {layers[j - 1]}
        for collection in ("params", "batch_stats"):
            for name, subtree in tiny_net.variables[collection].items():
                owner = name.removesuffix("_bn")
                want = fresh if owner in chosen else tiny_net.variables
                for leaf in subtree:
                    np.testing.assert_array_equal(stacked[collection][name][leaf][j], want[collection][name][leaf],
                                                  err_msg=f"set {j} {collection}/{name}/{leaf}")


@pytest.mark.slow
def test_vmapped_sets_equal_one_set_at_a_time(tiny_net):
    images = make_uint8_images(3, 2)
    kwargs = {"methods": ("saliency", "ig", "smoothgrad", "gradcam"), "n_steps": 3, "nt_samples": 2}
    looped = jaxviz.randomization_test(tiny_net, images, vmap_sets=False, **kwargs)
    vmapped = jaxviz.randomization_test(tiny_net, images, vmap_sets=True, **kwargs)
    for method in kwargs["methods"]:
        got, want = vmapped.correlations[method], looped.correlations[method]
        assert got.shape == (6, 3)
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=method)  # ranks of near-equal values may swap


def test_sanity_check_on_an_nnx_model_with_and_without_its_initializer():
    """The tiny nnx net (a conv, Dropout with its RNG state, a linear head): re-initialised by its own initializer
    when ``init`` is given, by scale-matched Gaussian draws otherwise."""
    from flax import nnx

    import dropout_nnx

    images = make_uint8_images(2, 3)
    shape, classes = dropout_nnx.INPUT_SHAPE, dropout_nnx.CLASS_NAMES
    own = jaxviz.from_nnx(dropout_nnx.build(), input_shape=shape, class_names=classes,
                          init=lambda key: dropout_nnx.DropoutNet(nnx.Rngs(key)))
    result = jaxviz.randomization_test(own, images, methods=("saliency", "gradcam"), layers=["fc", "conv"])
    assert result.initializer == "model" and result.correlations["gradcam"].shape == (2, 2)
    plain = jaxviz.from_nnx(dropout_nnx.build(), input_shape=shape, class_names=classes)
    result = jaxviz.randomization_test(plain, images, methods=("saliency",), layers=["fc"])
    assert result.initializer == "gaussian" and np.isfinite(result.correlations["saliency"]).all()
    assert "saliency" in result.sentence() and ("passes" in result.sentence() or "fails" in result.sentence())


def test_result_summaries(linear_net):
    result = jaxviz.SanityCheck(("saliency", "ig"), ("b", "a"), "cascading",
                                {"saliency": np.array([[0.9, 0.7], [0.1, np.nan]]),
                                 "ig": np.array([[0.9, 0.9], [0.8, 0.6]])}, np.zeros(2, int), "model")
    np.testing.assert_allclose(result.mean()["saliency"], [0.8, 0.1])
    assert result.final() == pytest.approx({"saliency": 0.1, "ig": 0.7})
    assert result.passes() == {"saliency": True, "ig": False}
    assert "saliency 0.10 (passes)" in result.sentence() and "integrated gradients 0.70 (fails)" in result.sentence()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"methods": ("saliency", "lime")}, ValueError, ["methods", "gradcam"]),
    ({"methods": "saliency"}, ValueError, ["methods"]),
    ({"mode": "random"}, ValueError, ["mode", "cascading"]),
    ({"layers": ["pool1"]}, ValueError, ["layers", "logits"]),
    ({"n_steps": 0}, ValueError, ["n_steps"]),
    ({"stdevs": -1.0, "methods": ("smoothgrad",)}, ValueError, ["stdevs"]),
    ({"cam_layer": "fc1"}, ValueError, ["cam_layer", "conv1"]),
])
def test_bad_input(tiny_net, kwargs, error, words):
    with pytest.raises(error) as info:
        jaxviz.randomization_test(tiny_net, make_uint8_images(2, 0), **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    with pytest.raises(TypeError, match="uint8"):
        jaxviz.randomization_test(tiny_net, jnp.zeros((2, 32, 32, 3)))


def test_constant_maps_give_undefined_correlations_and_no_verdict(linear_net):
    """Input x gradient of a black image is 0 everywhere: its correlations are undefined (NaN), the verdict
    is None (neither passes nor fails), the sentence, table and plot say "undefined"."""
    from jaxviz.evaluation.sanity import format_correlation
    from jaxviz.report import plots

    images = np.zeros((2, H, W, C), np.uint8)
    result = jaxviz.randomization_test(linear_net, images, methods=("ixg", "saliency"))
    assert np.isnan(result.correlations["ixg"]).all() and np.isfinite(result.correlations["saliency"]).all()
    assert np.isnan(result.final()["ixg"]) and result.passes()["ixg"] is None
    assert isinstance(result.passes()["saliency"], bool)
    assert "input × gradient undefined (no verdict" in result.sentence()
    assert format_correlation(float("nan")) == "undefined" and format_correlation(0.257) == "0.26"
    fig = plots.plot_sanity(result.layers, {"ixg": result.mean()["ixg"], "saliency": result.mean()["saliency"]},
                            threshold=0.5)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "ixg (undefined: all)" in labels and "saliency" in labels


def test_a_network_without_per_layer_variables_is_refused_by_name():
    def apply(variables, x, layer):
        hidden = x.reshape(x.shape[0], -1) @ variables["a"]
        return hidden if layer == "first" else hidden @ variables["b"]

    variables = {"a": jnp.full((H * W * C, 7), 0.1), "b": jnp.ones((7, K))}
    net = jaxviz.from_function(apply, variables, layer_names=("first", "second"), input_shape=(H, W, C),
                               class_names=[str(k) for k in range(K)])
    with pytest.raises(ValueError, match=r"^network: .*first, second.*\['a', 'b'\]"):
        jaxviz.randomization_test(net, np.zeros((1, H, W, C), np.uint8), methods=("saliency",))


@pytest.mark.parametrize("kwargs, words", [
    ({"images": np.zeros((0, H, W, C), np.uint8)}, "images: expected at least one image, got N = 0"),
    ({"seed": -1}, "seed: expected an int in [0, 4294967295], got -1"),
    ({"seed": 2**32}, "seed: expected an int in [0, 4294967295], got 4294967296"),
])
def test_no_images_and_seeds_out_of_range_are_refused(linear_net, kwargs, words):
    kwargs = {"images": np.zeros((1, H, W, C), np.uint8), **kwargs}
    with pytest.raises(ValueError) as info:
        jaxviz.randomization_test(linear_net, methods=("saliency",), **kwargs)
    assert str(info.value) == words


def test_an_untrained_model_made_with_the_randomizers_key_is_still_randomized():
    """A model initialized with key(0), checked with seed 0: the first draw equals it, so it is drawn again."""
    model = make_tiny_model()
    net = jaxviz.from_cnn(model, jaxviz.init_variables(model, jax.random.key(0)), [str(i) for i in range(10)])
    layers = randomization_layers(net)
    stacked, _ = randomized_variables(net, layers, mode="independent", seed=0)
    for j, layer in enumerate(layers, start=1):
        kernel = stacked["params"][layer]["kernel"]
        assert not np.array_equal(kernel[j], kernel[0]), layer  # randomized where chosen
        assert np.array_equal(kernel[(j % len(layers)) + 1], kernel[0]), layer  # kept elsewhere


def test_a_layer_whose_initializer_never_changes_it_is_refused(linear_net):
    def init(key):
        return {"first": {"w": jax.random.normal(key, (H * W * C, 7))}, "second": {"w": jnp.ones((7, K))}}

    trained = {"first": {"w": jnp.full((H * W * C, 7), 0.1)}, "second": {"w": jnp.ones((7, K))}}
    net = jaxviz.from_function(_linear_apply, trained, layer_names=("first", "second"), input_shape=(H, W, C),
                               class_names=[str(k) for k in range(K)], init=init)
    with pytest.raises(ValueError, match="^layers: randomizing 'second' leaves its variables as they are"):
        randomized_variables(net, ("second", "first"), seed=0)
    stacked, _ = randomized_variables(net, ("first",), seed=0)  # the other layer alone is fine
    assert not np.array_equal(stacked["first"]["w"][1], stacked["first"]["w"][0])
