"""CKA between layers: against a numpy transcription of the papers' formulas, the paper's invariances, one forward
for every layer, device invariance, resuming from a checkpoint, another network, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.analysis import cka as cka_module
from jaxviz.analysis.cka import cka, minibatches, pairwise_hsic
from jaxviz.checks import ArgumentError

from conftest import make_uint8_images

SIZE, DIM = 6, 12


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), written out with float64 matrices."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3)))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """Gretton et al. (2005): tr(K H L H) / (n - 1)²."""
    n = len(k)
    h = np.eye(n) - 1 / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def reference(features: list[np.ndarray], parts: list[np.ndarray], hsic) -> np.ndarray:
    """CKA of every pair: Σ over the minibatches of HSIC(K, L) / sqrt(Σ HSIC(K, K) Σ HSIC(L, L)), linear kernels."""
    sums = np.zeros((len(features), len(features)))
    for part in parts:
        grams = [f[part] @ f[part].T for f in features]
        sums += [[hsic(a, b) for b in grams] for a in grams]
    return sums / np.sqrt(np.outer(np.diag(sums), np.diag(sums)))


rng = np.random.default_rng(0)
ROTATION = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]  # orthogonal
MIXING = rng.normal(size=(DIM, DIM)) @ np.diag(np.geomspace(1, 30, DIM))  # invertible, far from orthogonal
PROJECTION = rng.normal(size=(SIZE * SIZE * 3, DIM)) / 10
LAYERS = ("base", "rotated", "scaled", "mixed", "squared", "unrelated")


def _features_apply(variables, x, layer):
    base = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["projection"])
    return {"base": base, "rotated": base @ variables["rotation"], "scaled": 3.7 * base + 2.0,
            "mixed": base @ variables["mixing"], "squared": (base ** 2).reshape(-1, 3, 4),
            "unrelated": jnp.sin(40 * x[:, :2, :2, 0].reshape(x.shape[0], -1))}[layer]


@pytest.fixture(scope="module")
def features_net():
    """A network whose layers are known transforms of one random-feature layer."""
    variables = {"projection": PROJECTION, "rotation": ROTATION, "mixing": MIXING}
    return jaxviz.from_function(_features_apply, variables, layer_names=LAYERS, input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def images():
    return make_uint8_images(70, seed=3, size=SIZE)


def _features(net, images):
    return [np.asarray(jaxviz.layer_features(net, images, layer=layer), np.float64).reshape(len(images), -1)
            for layer in net.layer_names]


def test_pairwise_hsic_is_the_papers_formulas():
    x = np.random.default_rng(1).normal(size=(3, 9, 5)) + 4  # far from centred
    grams = np.einsum("lid,ljd->lij", x, x)
    centred = x - x.mean(1, keepdims=True)
    zero_diagonal = np.einsum("lid,ljd->lij", centred, centred) * (1 - np.eye(9))
    got = np.asarray(pairwise_hsic(jnp.asarray(zero_diagonal, jnp.float32), jnp.float32(9)))
    want = [[hsic_unbiased(a, b) for b in grams] for a in grams]  # of the uncentred Gram matrices: the same
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4 * np.abs(want).max())
    full = np.einsum("lid,ljd->lij", centred, centred)
    got = np.asarray(pairwise_hsic(jnp.asarray(full, jnp.float32), jnp.float32(9), biased=True))
    np.testing.assert_allclose(got, [[hsic_biased(a, b) for b in grams] for a in grams], rtol=2e-4)


def test_minibatch_and_full_equal_numpy(features_net, images):
    features = _features(features_net, images)
    got = cka(features_net, images, batch_size=16, seed=5)
    parts = minibatches(len(images), 16, seed=5)
    assert [len(p) for p in parts] == [14] * 5 and got.batches == 5 and got.batch_size == 14
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(images)))
    np.testing.assert_allclose(got.matrix, reference(features, parts, hsic_unbiased), atol=2e-5)
    full = cka(features_net, images, method="full")
    np.testing.assert_allclose(full.matrix, reference(features, [np.arange(len(images))], hsic_unbiased), atol=2e-5)
    biased = cka(features_net, images, method="full", hsic="biased")
    np.testing.assert_allclose(biased.matrix, reference(features, [np.arange(len(images))], hsic_biased), atol=2e-5)


def test_the_papers_invariances(features_net, images):
    """Invariant to orthogonal maps and isotropic scaling (and a shift: features are centred); not to an
    arbitrary invertible linear map; CKA(X, X) = 1."""
    for result in (cka(features_net, images, batch_size=16), cka(features_net, images, method="full", hsic="biased")):
        m = dict(zip(LAYERS, result.matrix[0]))
        np.testing.assert_allclose(np.diag(result.matrix), 1, atol=1e-6)
        np.testing.assert_allclose([m["rotated"], m["scaled"]], 1, atol=1e-5)
        assert m["mixed"] < 0.95, m
        assert m["unrelated"] < 0.5, m
        np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-6)


def test_shuffled_minibatches_approach_the_full_value_and_sorted_ones_need_not(features_net):
    """Images sorted by a feature (as datasets sorted by class): minibatches in dataset order are each of one kind
    and miss the spread between kinds; the seeded order keeps the estimate near the full-batch value."""
    pictures = make_uint8_images(240, seed=8, size=SIZE)
    order = np.argsort(pictures.reshape(240, -1).mean(1))
    pictures = pictures[order]
    full = cka(features_net, pictures, ["base", "squared"], method="full").matrix[0, 1]
    shuffled = cka(features_net, pictures, ["base", "squared"], batch_size=40).matrix[0, 1]
    in_order = cka(features_net, pictures, ["base", "squared"], batch_size=40, seed=None).matrix[0, 1]
    assert abs(shuffled - full) < abs(in_order - full), (full, shuffled, in_order)


def test_every_layer_from_one_forward():
    """The program of all 12 layers of the CNN has as many convolutions as the CNN (XLA shares the prefix)."""
    net = jaxviz.load_pretrained().network
    fs = tuple((0, net.layer_fn(layer)) for layer in net.layer_names)
    mesh = jaxviz._batching.batch_sharding(None).mesh
    program = cka_module.cka_program(fs, (net.input_spec.to_input,), (None,), mesh, False)
    text = program.lower((net.variables,), jnp.zeros((8, 32, 32, 3), jnp.uint8),
                         jnp.ones(8, jnp.float32)).compile().as_text()
    assert len(re.findall(r"\bconvolution\(", text)) == len(net.conv_layers()) == 6


def test_a_second_call_compiles_nothing(features_net, images, compiles):
    first = cka(features_net, images, batch_size=16)
    before = len(compiles)
    again = cka(features_net, images, batch_size=16)
    assert len(compiles) == before
    np.testing.assert_array_equal(first.matrix, again.matrix)


class Killed(Exception):
    """A process stopped part way (the records on disk are what survives a kill)."""


def test_resumes_after_a_crash_and_refuses_another_calls_folder(features_net, images, tmp_path, monkeypatch):
    want = cka(features_net, images, batch_size=8)  # 9 minibatches: 9 steps on one device
    calls, crash = [], True
    real = cka_module.cka_program

    def crashing(*args):
        program = real(*args)

        def run(*a):
            calls.append(1)
            if crash and len(calls) == 4:
                raise Killed
            return program(*a)

        return run

    monkeypatch.setattr(cka_module, "cka_program", crashing)
    with pytest.raises(Killed):
        cka(features_net, images, batch_size=8, checkpoint=tmp_path / "ckpt")
    calls.clear()
    crash = False
    got = cka(features_net, images, batch_size=8, checkpoint=tmp_path / "ckpt")
    assert len(calls) == want.batches - 3  # the three recorded steps are not run again
    np.testing.assert_allclose(got.matrix, want.matrix, rtol=0, atol=1e-12)
    with pytest.raises(ArgumentError, match="checkpoint"):
        cka(features_net, images, batch_size=10, checkpoint=tmp_path / "ckpt")


def test_another_network_and_another_input_size(features_net, images):
    """Columns from a second network; one of twice the size sees the images resized (``resize_images``)."""
    big = jaxviz.from_function(lambda v, x, layer: _features_apply(v, jax.image.resize(
        x, (x.shape[0], SIZE, SIZE, 3), "linear", antialias=True), layer), features_net.variables,
        layer_names=LAYERS, input_shape=(2 * SIZE, 2 * SIZE, 3))
    got = cka(features_net, images, ["base", "mixed"], other=big, other_layers=["rotated", "unrelated"],
              method="full")
    resized = jaxviz.resize_images(images, 2 * SIZE, 2 * SIZE)
    a = _features(features_net, images)
    b = _features(big, resized)
    ref = reference([a[0], a[3], b[1], b[5]], [np.arange(len(images))], hsic_unbiased)
    np.testing.assert_allclose(got.matrix, ref[:2, 2:], atol=2e-5)
    assert got.layers == ("base", "mixed") and got.other_layers == ("rotated", "unrelated")
    assert got.matrix.shape == (2, 2) and got.hsic_sums.shape == (4, 4)
    same = cka(features_net, images, ["base", "mixed"], other_layers=["rotated", "unrelated"], method="full")
    full = reference([a[0], a[3], a[1], a[5]], [np.arange(len(images))], hsic_unbiased)  # columns of its own layers
    np.testing.assert_allclose(same.matrix, full[:2, 2:], atol=2e-5)


def test_four_devices_give_the_one_device_result(features_net, images, tmp_path):
    """CKA's minibatches (and TCAV's gradients) spread over four forced host devices give the one-device numbers."""
    want = cka(features_net, images, batch_size=8)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, jax
        import jaxviz
        from test_cka import _features_apply, LAYERS, PROJECTION, ROTATION, MIXING, SIZE
        from conftest import make_uint8_images
        assert len(jax.devices()) == 4
        net = jaxviz.from_function(_features_apply, {{"projection": PROJECTION, "rotation": ROTATION, "mixing": MIXING}},
                                   layer_names=LAYERS, input_shape=(SIZE, SIZE, 3))
        print(json.dumps(jaxviz.cka(net, make_uint8_images(70, seed=3, size=SIZE), batch_size=8).matrix.tolist()))
        sample = jaxviz.load_sample().subset(range(0, 1000, 25))
        print(json.dumps(jaxviz.tcav(jaxviz.load_pretrained().network, None, ["cat", "ship"], ["fc1"], images=sample,
                                     runs=3, concept_images=8, cav="mean_difference").run_scores.tolist()))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    np.testing.assert_allclose(json.loads(lines[-2]), want.matrix, atol=1e-6)
    sample = jaxviz.load_sample().subset(range(0, 1000, 25))  # TCAV: the gradients sharded over the four devices
    scores = jaxviz.tcav(jaxviz.load_pretrained().network, None, ["cat", "ship"], ["fc1"], images=sample, runs=3,
                         concept_images=8, cav="mean_difference").run_scores
    # shares of 20 images per class: features and gradients of other batch shapes differ by reassociation, which
    # may flip the sign of a derivative that is near 0 (one image: 0.05)
    np.testing.assert_allclose(json.loads(lines[-1]), scores, atol=0.11)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(layers=["base", "nope"]), "layers"),
    (dict(layers=["base", "base"]), "layers"),
    (dict(layers="base"), "layers"),
    (dict(other_layers=["nope"]), "other_layers"),
    (dict(batch_size=3), "batch_size"),
    (dict(method="gram"), "method"),
    (dict(hsic="biased"), "hsic"),
    (dict(hsic="fast", method="full"), "hsic"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_refused_before_any_compiling(features_net, images, kwargs, argument, compiles):
    before = len(compiles)
    with pytest.raises((ArgumentError, TypeError), match=argument):
        cka(features_net, images, **kwargs)
    assert len(compiles) == before


def test_bad_images_and_networks(features_net, images, tmp_path):
    with pytest.raises(ArgumentError, match="images"):
        cka(features_net, make_uint8_images(5, seed=0, size=SIZE + 1))
    with pytest.raises(ArgumentError, match="images"):
        cka(features_net, images[:3], method="full")
    with pytest.raises(ArgumentError, match="batch_size"):  # 9 images in minibatches of at most 4: three of 3
        cka(features_net, images[:9], batch_size=4)
    with pytest.raises(TypeError, match="images"):
        cka(features_net, images.astype(np.float32))
    gray = jaxviz.from_function(lambda v, x, layer: x.reshape(x.shape[0], -1), {}, layer_names=["x"],
                                input_shape=(SIZE, SIZE, 1))
    with pytest.raises(ArgumentError, match="other"):
        cka(features_net, images, other=gray)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="checkpoint"):
        cka(features_net, images, checkpoint=tmp_path / "file")
