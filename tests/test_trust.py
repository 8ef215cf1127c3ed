"""compare_methods: the maps equal the methods called one by one, and the ranking is the documented one."""

import numpy as np
import pytest

import jaxviz
from jaxviz.evaluation.comparison import METRICS, MethodComparison

from conftest import make_uint8_images
from numerics import assert_close


@pytest.fixture(scope="module")
def net(tiny_model, tiny_variables):
    return jaxviz.from_cnn(tiny_model, tiny_variables, tuple(f"c{i}" for i in range(10)))


@pytest.mark.slow
def test_maps_and_scores_equal_the_methods_called_one_by_one(net):
    images = make_uint8_images(3, seed=5)
    options = dict(window=8, stride=8, num_masks=40, cells=4, segments=4, steps=8, mu_grid=4, num_subsets=12,
                   n_steps=4, nt_samples=3)
    got = jaxviz.compare_methods(net, images, **options)
    logits = jaxviz.layer_features(net, images)
    np.testing.assert_array_equal(got.targets, logits.argmax(-1))  # a classifier explains its prediction
    assert got.layer == net.output_layer and list(got.maps) == [
        "occlusion", "RISE", "feature ablation", "saliency", "input × gradient", "integrated gradients",
        "SmoothGrad", "Grad-CAM"]

    def probabilities(variables, x):  # written here, independently of the module's
        import jax
        return jax.nn.softmax(net.layer_fn(net.output_layer)(variables, x), -1)

    x = net.to_input(images)
    rows = np.arange(3)
    occ = jaxviz.occlude(probabilities, x, params=net.variables, window=8, stride=8)
    assert_close(got.maps["occlusion"], occ.pixel_map(got.targets), scale=occ.base)
    ris = jaxviz.rise(probabilities, x, params=net.variables, num_masks=40, cells=4)
    assert_close(got.maps["RISE"], ris.maps[rows, ..., got.targets])
    abl = jaxviz.feature_ablation(probabilities, x, params=net.variables, segments=jaxviz.grid_segments(32, 32, cells=4))
    assert_close(got.maps["feature ablation"], abl.maps[rows, ..., got.targets], scale=abl.base)
    common = {"params": net.variables, "targets": got.targets}
    assert_close(got.maps["saliency"], jaxviz.saliency(probabilities, x, **common).attributions.sum(-1))
    ig = jaxviz.integrated_gradients(probabilities, x, n_steps=4, **common)
    assert_close(got.maps["integrated gradients"], ig.attributions.sum(-1))
    sg = jaxviz.smoothgrad(probabilities, x, nt_samples=3, **common)
    assert_close(got.maps["SmoothGrad"], sg.attributions.sum(-1))
    cam = jaxviz.grad_cam(net, x, layer="pool2", targets=got.targets,
                          score=lambda out: __import__("jax").nn.softmax(out, -1))
    assert_close(got.maps["Grad-CAM"], cam.attributions)
    for name, attribution in got.maps.items():
        deletion = jaxviz.deletion_curve(probabilities, x, attribution, steps=8, params=net.variables,
                                         targets=got.targets)
        assert_close(got.scores[name]["deletion_auc"], deletion.auc, rel=1e-4)
        assert set(got.scores[name]) == set(METRICS)
        assert all(np.isfinite(v).all() for v in got.scores[name].values())
    assert got.ranking()[0] in got.sentence()


def test_ranking_is_the_mean_rank_over_the_metrics():
    one = np.ones(2)
    scores = {  # a: best deletion and insertion; b: best MuFidelity; c: worst everywhere
        "a": {"deletion_auc": 0.1 * one, "insertion_auc": 0.9 * one, "mu_fidelity": 0.2 * one},
        "b": {"deletion_auc": 0.2 * one, "insertion_auc": 0.8 * one, "mu_fidelity": 0.9 * one},
        "c": {"deletion_auc": 0.3 * one, "insertion_auc": 0.1 * one, "mu_fidelity": 0.1 * one},
    }
    comparison = MethodComparison(np.zeros(2, np.int64), "out", {}, scores)
    assert comparison.ranking() == ["a", "b", "c"]
    assert comparison.means()["b"]["mu_fidelity"] == pytest.approx(0.9)
    sentence = comparison.sentence()
    assert sentence.startswith("On this model a is") and "mu fidelity: b (0.900)" in sentence


def test_a_unit_of_a_network_without_classes(tiny_model, tiny_variables):
    net = jaxviz.from_cnn(tiny_model, tiny_variables)  # no class names: explain a unit
    images = make_uint8_images(2, seed=6)
    got = jaxviz.compare_methods(net, images, layer="fc1", targets=np.array([3, 5]), window=16, stride=16,
                                 num_masks=8, cells=2, segments=2, steps=4, mu_grid=2, num_subsets=4,
                                 methods=("occlusion", "gradcam", "ig"), n_steps=2)
    assert got.layer == "fc1" and got.targets.tolist() == [3, 5]
    assert list(got.maps) == ["occlusion", "Grad-CAM", "integrated gradients"]
    assert all(m.shape == (2, 32, 32) for m in got.maps.values())
    for bad in (np.array([1]), np.array([1, 16]), np.array([0.5, 1.0])):
        with pytest.raises(ValueError, match="targets"):
            jaxviz.compare_methods(net, images, layer="fc1", targets=bad)
    with pytest.raises(ValueError, match="methods"):
        jaxviz.compare_methods(net, images, layer="fc1", methods=("lime",))
    with pytest.raises(ValueError, match="spatial maps before 'conv1'"):
        jaxviz.compare_methods(net, images, layer="conv1", methods=("gradcam",))


def test_identical_scores_share_a_rank_and_the_sentence_says_they_tie():
    one = np.ones(2)
    same = {"deletion_auc": 0.2 * one, "insertion_auc": 0.8 * one, "mu_fidelity": 0.5 * one}
    scores = {"zeta": dict(same), "alpha": dict(same),  # not in alphabetical order: no name decides
              "worse": {"deletion_auc": 0.3 * one, "insertion_auc": 0.1 * one, "mu_fidelity": 0.1 * one}}
    comparison = MethodComparison(np.zeros(2, np.int64), "out", {}, scores)
    ranks = comparison.ranks()
    assert ranks["zeta"] == ranks["alpha"] == 0.5 and ranks["worse"] == 2.0
    assert comparison.ranking() == ["zeta", "alpha", "worse"]  # ties keep the order given
    sentence = comparison.sentence()
    assert sentence.startswith("On this model zeta and alpha tie as the most faithful methods"), sentence
    assert "deletion auc: zeta and alpha (0.200)" in sentence


def test_one_method_is_not_called_the_most_faithful():
    one = np.ones(2)
    scores = {"saliency": {"deletion_auc": 0.2 * one, "insertion_auc": 0.8 * one, "mu_fidelity": 0.5 * one}}
    sentence = MethodComparison(np.zeros(2, np.int64), "out", {}, scores).sentence()
    assert "most faithful" not in sentence and "saliency" in sentence and "no other method" in sentence


def _counting_network(calls):
    """A from_function network without apply_perturbed; ``calls`` records every trace of apply."""
    import jax.numpy as jnp

    def apply(variables, x, layer):
        calls.append(layer)
        pooled = x.reshape(x.shape[0], 4, 8, 4, 8, 3).mean(axis=(2, 4))  # (N, 4, 4, 3)
        return pooled if layer == "pool" else pooled.reshape(x.shape[0], -1) @ variables["out"]["w"]

    w = jnp.asarray(np.random.default_rng(0).normal(size=(48, 3)), jnp.float32)
    return jaxviz.from_function(apply, {"out": {"w": w}}, layer_names=("pool", "out"), input_shape=(32, 32, 3),
                                class_names=("a", "b", "c"))


def test_every_methods_requirements_are_checked_before_any_method_runs():
    calls = []
    net = _counting_network(calls)
    images = make_uint8_images(2, seed=7)
    targets = np.array([0, 1])
    calls.clear()
    with pytest.raises(ValueError, match="^methods: gradcam: network: .*no apply_perturbed"):
        jaxviz.compare_methods(net, images, targets=targets, methods=("occlusion", "saliency", "gradcam"))
    assert calls == [], "a method ran before Grad-CAM was refused"
    for kwargs, words in [({"seed": 2**32}, "^seed: "), ({"seed": -1}, "^seed: "),
                          ({"steps": 32 * 32 + 1}, r"^steps: expected an int in \[1, 1024\]"),
                          ({"n_steps": 0, "methods": ("occlusion", "ig")}, "^n_steps: "),
                          ({"segments": 33, "methods": ("occlusion", "ablation")}, "^segments: "),
                          ({"mu_grid": 33}, r"^mu_grid: expected an int in \[1, 32\]"),
                          ({"num_subsets": 1}, "^num_subsets: ")]:
        with pytest.raises(ValueError, match=words):
            jaxviz.compare_methods(net, images, targets=targets, **{"methods": ("occlusion",), **kwargs})
        assert calls == [], kwargs
