"""TCAV: a planted concept found by a network trained in the test, random concepts insignificant, CAVs against
scikit-learn and numpy, the procedural concepts, concept folders, and bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import jaxviz
from jaxviz.analysis.tcav import fit_cav, tcav
from jaxviz.checks import ArgumentError
from jaxviz.data.concepts import CONCEPTS

S = 12  # image size
CLASSES = ("striped", "plain", "red")


def _stripes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Horizontal stripes of random period, phase and colours (the test's own drawing, not the library's)."""
    y = np.arange(S)[:, None, None]
    out = []
    for _ in range(n):
        period, phase = rng.integers(2, 5), rng.integers(0, 4)
        dark = rng.uniform(0, 90, 3)
        out.append(np.broadcast_to(np.where((y + phase) % period < period / 2, dark + rng.uniform(100, 160, 3), dark),
                                   (S, S, 3)))
    return np.stack(out)


def make_data(seed: int, n: int) -> jaxviz.Dataset:
    """Class 0 always carries stripes, class 1 never; class 2 is red, with stripes on half its images."""
    rng = np.random.default_rng(seed)
    striped = _stripes(rng, n) + rng.normal(0, 10, (n, S, S, 3))
    plain = rng.uniform(40, 200, (n, 1, 1, 3)) + rng.normal(0, 20, (n, S, S, 3))
    red = rng.uniform(40, 200, (n, 1, 1, 3)) + rng.normal(0, 20, (n, S, S, 3)) + np.array([80, -40, -40])
    half = rng.random(n) < 0.5
    red[half] = 0.5 * red[half] + 0.5 * (_stripes(rng, int(half.sum())) + np.array([80, -40, -40]))
    images = np.clip(np.concatenate([striped, plain, red]), 0, 255).astype(np.uint8)
    return jaxviz.Dataset(images, np.repeat(np.arange(3), n), CLASSES)


class Heads(nn.Module):
    @nn.compact
    def __call__(self, h, colour):
        return jnp.concatenate([nn.Dense(2, name="shape")(h), nn.Dense(1, name="colour")(colour)], -1)


class TwoPaths(nn.Module):
    """Convolutions for the first two classes; the third class's logit reads the mean colour alone, so its
    logit does not depend on ``conv2`` or ``fc`` at all: stripes are irrelevant to it by construction."""

    @nn.compact
    def __call__(self, x):
        colour = x.mean((1, 2))
        h = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(8, (3, 3), name="conv2")(h))
        h = nn.relu(nn.Dense(16, name="fc")(h.mean((1, 2))))
        return Heads(name="logits")(h, colour)


@pytest.fixture(scope="module")
def planted():
    """The network trained for 300 Adam steps (a few seconds), and held-out images."""
    module, data = TwoPaths(), make_data(0, 200)
    variables = module.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(variables, state, images, labels):
        def loss(v):
            return optax.softmax_cross_entropy_with_integer_labels(module.apply(v, images / 255.0), labels).mean()

        updates, state = optimizer.update(jax.grad(loss)(variables), state)
        return optax.apply_updates(variables, updates), state

    state, rng = optimizer.init(variables), np.random.default_rng(0)
    for _ in range(300):
        batch = rng.choice(len(data), 64)
        variables, state = step(variables, state, data.images[batch], data.labels[batch])
    net = jaxviz.from_linen(module, variables, input_shape=(S, S, 3), class_names=CLASSES)
    held_out = make_data(1, 40)
    accuracy = (jaxviz.layer_features(net, held_out.images).argmax(1) == held_out.labels).mean()
    assert accuracy > 0.8, accuracy
    return net, held_out


def test_a_planted_concept_is_found_and_random_ones_are_not(planted):
    net, data = planted
    concepts = {"stripes": jaxviz.procedural_concepts(S, S, count=30, names=("stripes-horizontal",))[
        "stripes-horizontal"], "random": data.images}  # "random": the pool itself, so each run draws a fresh set
    result = tcav(net, concepts, ["striped", "red"], ["conv2", "fc"], images=data, runs=12, seed=0)
    assert result.scores.shape == result.significant.shape == result.p_values.shape == (2, 2, 2)
    assert result.run_scores.shape == (2, 2, 2, 12) and result.random_scores.shape == (2, 2, 12)
    stripes, random = 0, 1
    striped, red = 0, 1
    fc = 1
    assert result.significant[stripes, striped, fc] and result.scores[stripes, striped, fc] >= 0.9, result.table()
    assert not result.significant[stripes, red].any(), result.table()  # its logit does not depend on the layers
    np.testing.assert_array_equal(result.run_scores[:, red], 0)  # a zero derivative is not positive
    assert not result.significant[random].any(), result.table()
    assert np.isnan(result.scores[~result.significant]).all()  # an insignificant result has no score
    assert "n.s." in result.table() and result.to_json()["scores"][random][0][0] is None
    assert result.set_size == 30 and (result.cav_accuracy[stripes, fc] > 0.75).all()  # a third of the pool is striped


def test_the_score_is_the_share_of_positive_directional_derivatives(planted):
    """A layer whose logit is linear in it: every image's gradient is the same row of the dense kernel, so the
    score of every run is 0 or 1, by the sign of the kernel row along the CAV; mean-difference CAVs are numpy's."""
    net, data = planted
    concepts = {"stripes": jaxviz.procedural_concepts(S, S, count=8, names=("stripes-horizontal",))[
        "stripes-horizontal"]}
    result = tcav(net, concepts, ["striped"], ["fc"], images=data, runs=3, cav="mean_difference", seed=2)
    assert set(np.unique(result.run_scores)) <= {0.0, 1.0}
    kernel = np.asarray(net.variables["params"]["logits"]["shape"]["kernel"])[:, 0]  # d logit_0 / d fc
    fc = np.asarray(jaxviz.layer_features(net, concepts["stripes"], layer="fc"), np.float64)
    pool = np.asarray(jaxviz.layer_features(net, data.images, layer="fc"), np.float64)
    # the sets of run r as tcav draws them: the concept's 8 images, random set B_r of 8 from the pool
    rng = np.random.default_rng(2)
    subsets = [rng.choice(8, 8, replace=False) for _ in range(3)]
    draws = [rng.choice(len(pool), 8, replace=False) for _ in range(6)]
    for r in range(3):
        direction = fc[subsets[r]].mean(0) - pool[draws[3 + r]].mean(0)
        assert result.run_scores[0, 0, 0, r] == float(kernel @ direction > 0)


def test_logistic_cavs_equal_scikit_learn_and_mean_difference_numpy():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    for width in (6, 300):  # fewer and more features than examples
        positive = rng.normal(0.3, 1, (40, width)) * rng.uniform(0.5, 3, width) + 2
        negative = rng.normal(0.0, 1, (40, width)) * rng.uniform(0.5, 3, width) + 2
        cav, accuracy = fit_cav(jnp.asarray(positive, jnp.float32), jnp.asarray(negative, jnp.float32))
        fitted = LogisticRegression(max_iter=10_000, tol=1e-10).fit(np.concatenate([positive, negative]),
                                                                     np.r_[np.ones(40), np.zeros(40)])
        want = fitted.coef_[0] / np.linalg.norm(fitted.coef_[0])
        assert float(np.asarray(cav) @ want) >= 0.999, width
        assert float(accuracy) == pytest.approx(fitted.score(np.concatenate([positive, negative]),
                                                             np.r_[np.ones(40), np.zeros(40)]), abs=1 / 80)
        cav, _ = fit_cav(jnp.asarray(positive, jnp.float32), jnp.asarray(negative, jnp.float32),
                         method="mean_difference")
        difference = positive.mean(0) - negative.mean(0)
        np.testing.assert_allclose(np.asarray(cav), difference / np.linalg.norm(difference), atol=1e-5)


def test_procedural_concepts_are_seeded_and_differ():
    a = jaxviz.procedural_concepts(16, 20, count=4, seed=1)
    b = jaxviz.procedural_concepts(16, 20, count=4, seed=1, names=("dots",))
    assert set(a) == set(CONCEPTS) and all(v.shape == (4, 16, 20, 3) and v.dtype == np.uint8 for v in a.values())
    np.testing.assert_array_equal(a["dots"], b["dots"])  # a concept does not depend on the others drawn
    assert not np.array_equal(a["dots"], jaxviz.procedural_concepts(16, 20, count=4, seed=2)["dots"])
    horizontal, vertical = a["stripes-horizontal"].astype(float), a["stripes-vertical"].astype(float)
    assert np.abs(np.diff(horizontal, axis=2)).mean() < 10 < np.abs(np.diff(horizontal, axis=1)).mean()
    assert np.abs(np.diff(vertical, axis=1)).mean() < 10 < np.abs(np.diff(vertical, axis=2)).mean()
    red = a["red"].astype(float).mean((0, 1, 2))
    assert red[0] > 150 > 60 > red[1:].max()
    assert jaxviz.procedural_concepts(8, 8, 1, count=2)["noise"].shape == (2, 8, 8, 1)


def test_a_concept_folder(planted, tmp_path):
    net, data = planted
    folder = tmp_path / "stripes"
    folder.mkdir()
    images = jaxviz.procedural_concepts(S, S, count=5, names=("stripes-vertical",))["stripes-vertical"]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / ".hidden").write_text("not an image")
    np.testing.assert_array_equal(jaxviz.load_concept_folder(folder), images)
    result = tcav(net, {"stripes": folder}, ["striped"], ["fc"], images=data, runs=2, cav="mean_difference")
    assert result.concepts == ("stripes",) and result.set_size == 5


@pytest.mark.parametrize("change, argument", [
    (dict(runs=1), "runs"),
    (dict(layers=["nope"]), "layers"),
    (dict(layers=["logits"]), "layers"),
    (dict(layers=["fc", "fc"]), "layers"),
    (dict(targets=["zebra"]), "targets"),
    (dict(targets=[3]), "targets"),
    (dict(cav="svm"), "cav"),
    (dict(alpha=1.5), "alpha"),
    (dict(concepts={"tiny": np.zeros((3, S, S, 3), np.uint8)}), "tiny"),
    (dict(concepts={"big": np.zeros((5, S + 1, S, 3), np.uint8)}), "big"),
    (dict(concepts={"float": np.zeros((5, S, S, 3), np.float32)}), "float"),
    (dict(concepts={}), "concepts"),
    (dict(random_images=np.zeros((3, S, S, 3), np.uint8)), "random_images"),
])
def test_bad_input_is_refused_before_compiling(planted, change, argument, compiles):
    net, data = planted
    arguments = dict(concepts=None, targets=["striped"], layers=["fc"], images=data, runs=2)
    arguments |= change
    if arguments["layers"] == ["logits"]:
        arguments["layers"] = [net.output_layer]
    before = len(compiles)
    with pytest.raises((ArgumentError, TypeError), match=argument):
        tcav(net, arguments.pop("concepts"), arguments.pop("targets"), arguments.pop("layers"), **arguments)
    assert len(compiles) == before


def test_missing_and_empty_concept_folders(planted, tmp_path):
    net, data = planted
    with pytest.raises(FileNotFoundError, match="concepts\\['gone'\\]"):
        tcav(net, {"gone": tmp_path / "gone"}, ["striped"], ["fc"], images=data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgumentError, match="concepts\\['empty'\\].*none"):
        tcav(net, {"empty": tmp_path / "empty"}, ["striped"], ["fc"], images=data)
    with pytest.raises(ArgumentError, match="targets"):  # no image of the class
        tcav(net, None, ["red"], ["fc"], images=jaxviz.Dataset(data.images[:10], data.labels[:10], CLASSES))


def test_a_dataset_in_another_class_order_scores_the_same_classes(planted):
    net, data = planted
    order = tuple(reversed(CLASSES))
    reordered = jaxviz.Dataset(data.images, np.array([order.index(CLASSES[y]) for y in data.labels]), order)
    concepts = {"red": jaxviz.procedural_concepts(S, S, count=6, names=("red",))["red"]}
    a = tcav(net, concepts, ["striped", "red"], ["fc"], images=data, runs=2, cav="mean_difference")
    b = tcav(net, concepts, ["striped", "red"], ["fc"], images=reordered, runs=2, cav="mean_difference")
    np.testing.assert_array_equal(a.run_scores, b.run_scores)
    np.testing.assert_array_equal(a.images_per_target, [40, 40])
    with pytest.raises(ArgumentError, match="images"):
        tcav(net, concepts, ["striped"], ["fc"], images=jaxviz.Dataset(data.images, data.labels, ("a", "b", "c")))


def test_a_second_call_compiles_nothing(planted, compiles):
    net, data = planted
    concepts = {"red": jaxviz.procedural_concepts(S, S, count=6, names=("red",))["red"]}
    first = tcav(net, concepts, ["striped"], ["conv2", "fc"], images=data, runs=3, seed=4)
    before = len(compiles)
    again = tcav(net, concepts, ["striped"], ["conv2", "fc"], images=data, runs=3, seed=4)
    assert len(compiles) == before
    np.testing.assert_array_equal(first.run_scores, again.run_scores)
