"""Gradient attributions against Captum (stored fixtures without torch, and Captum itself when installed),
analytic answers, a per-sample loop for SmoothGrad, the all-units path against per-unit calls, chunk and
device invariance, no retrace, and bad input."""

import importlib.util
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
from jaxviz.methods.gradients import IG_METHODS, ig_coefficients

from conftest import make_tiny_model, make_uint8_images, randomize_variables
from numerics import assert_close, max_rel_error

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = np.load(Path(__file__).parent / "fixtures" / "captum_gradients.npz")
CAPTUM_REL = 1e-4  # the bar: relative error (max abs error / max |reference|)


# ------------------------------------------------------------------ the fixture's model, in JAX


def _conv(x):
    y = jax.lax.conv_general_dilated(x, FIXTURE["conv_kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(y + FIXTURE["conv_bias"])


def _pool(maps):  # 2x2 average, floor mode: (6, 7) -> (3, 3)
    return jax.lax.reduce_window(maps, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4


def _head(pooled):
    return pooled.mean(axis=(1, 2)) @ FIXTURE["dense"]


def tiny_logits(x):
    return _head(_pool(_conv(x)))


def _apply(variables, x, layer):
    maps = _conv(x)
    return {"tanh": maps, "pool": _pool(maps), "logits": _head(_pool(maps))}[layer]


def _apply_perturbed(variables, x, layer, delta, output_layer):
    maps = _conv(x)
    pooled = _pool(maps + delta if layer == "tanh" else maps)
    acts = maps if layer == "tanh" else pooled
    return acts, _head(pooled + delta if layer == "pool" else pooled)


@pytest.fixture(scope="module")
def tiny_net():
    return jaxviz.from_function(_apply, {}, layer_names=("tanh", "pool", "logits"), input_shape=(6, 7, 2),
                                apply_perturbed=_apply_perturbed)


def _close_to_captum(got, want, what):
    err = max_rel_error(got, want)
    assert err <= CAPTUM_REL, f"{what}: relative error {err:.2e} > {CAPTUM_REL:g}"


# ------------------------------------------------------------------ (a) Captum's stored results


def test_saliency_and_input_x_gradient_match_captum_fixture():
    x, targets = FIXTURE["x"], FIXTURE["targets"]
    _close_to_captum(jaxviz.saliency(tiny_logits, x, targets=targets).attributions, FIXTURE["saliency"], "saliency")
    _close_to_captum(jaxviz.input_x_gradient(tiny_logits, x, targets=targets).attributions,
                     FIXTURE["input_x_gradient"], "input x gradient")


@pytest.mark.parametrize("method", IG_METHODS)
def test_integrated_gradients_and_delta_match_captum_fixture(method):
    result = jaxviz.integrated_gradients(tiny_logits, FIXTURE["x"], targets=FIXTURE["targets"], method=method,
                                         n_steps=int(FIXTURE["n_steps"]), baselines=float(FIXTURE["baseline"]))
    _close_to_captum(result.attributions, FIXTURE[f"ig_{method}"], method)
    # the delta is a small difference of large sums: compare it at the scale of the attributions' sums
    scale = np.abs(FIXTURE[f"ig_{method}"].sum(axis=(1, 2, 3))).max()
    assert np.abs(result.delta - FIXTURE[f"ig_{method}_delta"]).max() <= CAPTUM_REL * scale


@pytest.mark.parametrize("layer", ["tanh", "pool"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grad_cam_matches_captum_fixture(tiny_net, layer, mode):
    result = jaxviz.grad_cam(tiny_net, FIXTURE["x"], layer=layer, targets=FIXTURE["targets"], interpolation=mode)
    _close_to_captum(result.layer_maps, FIXTURE[f"gradcam_{layer}"], f"{layer} maps")
    _close_to_captum(result.attributions, FIXTURE[f"gradcam_{layer}_{mode}"], f"{layer} {mode}")


def test_ig_coefficients_are_captums_by_hand():
    alphas, weights = ig_coefficients(4, "riemann_left")
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75]) and np.testing.assert_allclose(weights, [0.25] * 4)
    np.testing.assert_allclose(ig_coefficients(4, "riemann_right")[0], [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(ig_coefficients(4, "riemann_middle")[0], [0.125, 0.375, 0.625, 0.875])
    alphas, weights = ig_coefficients(4, "riemann_trapezoid")
    np.testing.assert_allclose(alphas, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.25, 0.125])  # Captum's: they sum to 1 - 1/n
    alphas, weights = ig_coefficients(2, "gausslegendre")
    np.testing.assert_allclose(alphas, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)], rtol=1e-6)
    np.testing.assert_allclose(weights, [0.5, 0.5], rtol=1e-6)


# ------------------------------------------------------------------ (b) analytic answers


W_LIN = np.asarray(jax.random.normal(jax.random.key(3), (4 * 5 * 2, 3)), np.float32)


def linear(x):
    return x.reshape(x.shape[0], -1) @ W_LIN


def test_linear_model_gradients_are_the_weights():
    x = np.asarray(jax.random.uniform(jax.random.key(4), (2, 4, 5, 2)), np.float32)
    weights = W_LIN.T.reshape(3, 4, 5, 2)
    sal = jaxviz.saliency(linear, x, abs=False)
    assert sal.attributions.shape == (2, 4, 5, 2, 3)
    assert_close(sal.attributions, np.broadcast_to(np.moveaxis(weights, 0, -1), (2, 4, 5, 2, 3)))
    ixg = jaxviz.input_x_gradient(linear, x, targets=[2, 0])
    assert_close(ixg.attributions, x * weights[[2, 0]])
    # for a linear f, integrated gradients is exact with any rule that weighs the path fully
    ig = jaxviz.integrated_gradients(linear, x, targets=1, baselines=0.5, n_steps=3)
    assert_close(ig.attributions, (x - 0.5) * weights[1])
    assert np.abs(ig.delta).max() < 1e-4 * np.abs(ig.attributions).sum(axis=(1, 2, 3)).max()


def test_quadratic_model_ig_is_the_quadrature_by_hand():
    w = np.linspace(-1, 1, 4 * 5 * 2, dtype=np.float32)

    def square(x):  # (w . x)^2: the gradient along the path is linear in alpha
        return (x.reshape(x.shape[0], -1) @ w) ** 2

    x = np.asarray(jax.random.uniform(jax.random.key(5), (2, 4, 5, 2)), np.float32)
    b = np.float32(0.25)
    d = x - b
    wb, wd = (np.full_like(x, b).reshape(2, -1) @ w), d.reshape(2, -1) @ w
    for method, n in (("riemann_left", 4), ("riemann_trapezoid", 5), ("gausslegendre", 3)):
        alphas, steps = ig_coefficients(n, method)
        path = sum(s * 2 * (wb + a * wd) for a, s in zip(alphas, steps))  # (N,): sum_k w_k d f / d(w.x)
        want = d * w.reshape(4, 5, 2) * path[:, None, None, None]
        got = jaxviz.integrated_gradients(square, x, baselines=b, n_steps=n, method=method)
        assert got.attributions.shape == x.shape and got.units is None
        assert_close(got.attributions, want, err_msg=method)
    # Gauss-Legendre is exact for this integrand: the attributions sum to f(x) - f(b)
    exact = jaxviz.integrated_gradients(square, x, baselines=b, n_steps=2)
    assert_close(exact.attributions.sum(axis=(1, 2, 3)), (wb + wd) ** 2 - wb ** 2, rel=1e-5)


def test_grad_cam_by_hand_on_a_one_layer_model():
    v = np.asarray(jax.random.normal(jax.random.key(6), (2, 3)), np.float32)

    def apply(variables, x, layer):
        return x if layer == "maps" else x.sum(axis=(1, 2)) @ v

    def apply_perturbed(variables, x, layer, delta, output_layer):
        return x, (x + delta).sum(axis=(1, 2)) @ v

    net = jaxviz.from_function(apply, {}, layer_names=("maps", "out"), input_shape=(4, 5, 2),
                               apply_perturbed=apply_perturbed)
    x = np.asarray(jax.random.normal(jax.random.key(7), (3, 4, 5, 2)), np.float32)
    # d out_k / d maps[h, w, c] = v[c, k] everywhere, so alpha = v[:, k] and cam = relu(x . v[:, k])
    cam = jaxviz.grad_cam(net, x, layer="maps")
    assert cam.attributions.shape == (3, 4, 5, 3)
    assert_close(cam.attributions, np.maximum(np.einsum("nhwc,ck->nhwk", x, v), 0))


# ------------------------------------------------------------------ (c) Captum itself, when installed


@pytest.fixture(scope="module")
def cnn_pair():
    torch = pytest.importorskip("torch")
    pytest.importorskip("captum")
    from torch_port import torch_cnn

    torch.manual_seed(0)
    model = make_tiny_model()
    variables = randomize_variables(jaxviz.init_variables(model, jax.random.key(0)), seed=0)
    net = jaxviz.from_cnn(model, variables, [str(i) for i in range(10)])
    x = net.to_input(make_uint8_images(4, 0))
    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_()
    return net, x, torch_cnn(model, variables, layer="logits"), xt


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def test_against_captum_itself(cnn_pair):
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

    net, x, model_t, xt = cnn_pair
    f, targets = net.layer_fn("logits"), np.array([1, 4, 7, 2])
    target_t, common = torch.tensor(targets), {"params": net.variables, "targets": targets}
    _close_to_captum(jaxviz.saliency(f, x, **common).attributions,
                     _nhwc(Saliency(model_t).attribute(xt, target=target_t)), "saliency")
    _close_to_captum(jaxviz.input_x_gradient(f, x, **common).attributions,
                     _nhwc(InputXGradient(model_t).attribute(xt, target=target_t)), "input x gradient")
    # ReLU and max-pool kinks: a 1-ulp difference in a path coefficient (Captum's come from
    # torch.linspace) may flip one, so on this CNN only the rules whose coefficients agree bit for bit
    for method in ("gausslegendre", "riemann_trapezoid"):
        got = jaxviz.integrated_gradients(f, x, n_steps=6, method=method, baselines=0.1, **common)
        want, delta = IntegratedGradients(model_t).attribute(xt, baselines=0.1, target=target_t, n_steps=6,
                                                             method=method, return_convergence_delta=True)
        _close_to_captum(got.attributions, _nhwc(want), method)
        scale = np.abs(_nhwc(want).sum(axis=(1, 2, 3))).max()
        assert np.abs(got.delta - delta.detach().numpy()).max() <= CAPTUM_REL * scale
    # NoiseTunnel draws torch noise: with zero noise it must reduce to Saliency's mean, square and variance 0
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        got = jaxviz.smoothgrad(f, x, nt_type=nt_type, nt_samples=3, stdevs=0.0, **common)
        want = NoiseTunnel(Saliency(model_t)).attribute(xt, nt_type=nt_type, nt_samples=3, stdevs=0.0,
                                                       target=target_t)
        assert_close(got.attributions, _nhwc(want), scale=_nhwc(want) if nt_type != "vargrad" else 1.0, rel=1e-4)
    relu_index = {"conv4": 12, "conv2": 5, "pool1": 6}  # in torch_cnn's Sequential: conv, bn, relu per conv
    for layer, index in relu_index.items():
        cam = LayerGradCam(model_t, model_t[index]).attribute(xt, target=target_t, relu_attributions=True)
        for mode in ("bilinear", "nearest"):
            got = jaxviz.grad_cam(net, x, layer=layer, targets=targets, interpolation=mode)
            _close_to_captum(got.attributions, LayerAttribution.interpolate(cam, (32, 32), mode)[:, 0].detach()
                             .numpy(), f"Grad-CAM {layer} {mode}")


def test_every_ig_rule_against_captum_itself_on_a_smooth_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("captum")
    from captum.attr import IntegratedGradients

    spec = importlib.util.spec_from_file_location("_make_captum_fixtures", ROOT / "tools" / "make_captum_fixtures.py")
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    model_t = tools.torch_tiny(FIXTURE)
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 6, 7, 2)).astype(np.float32)
    targets = np.array([3, 0, 2, 1])
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    for method in IG_METHODS:
        for n_steps in (2, 9):
            got = jaxviz.integrated_gradients(tiny_logits, x, targets=targets, n_steps=n_steps, method=method)
            want = IntegratedGradients(model_t).attribute(xt, target=torch.tensor(targets), n_steps=n_steps,
                                                          method=method)
            _close_to_captum(got.attributions, _nhwc(want), f"{method} {n_steps}")


# ------------------------------------------------------------------ (d) SmoothGrad, all units, invariance


def test_smoothgrad_equals_a_per_sample_loop_with_the_same_noise():
    x = np.asarray(jax.random.uniform(jax.random.key(8), (3, 4, 5, 2)), np.float32)

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ W_LIN) ** 2

    targets, samples, stdev, seed = np.array([0, 2, 1]), 6, 0.3, 11
    grads = np.zeros((samples, *x.shape), np.float32)
    key = jax.random.key(seed)
    for i in range(3):
        for s in range(samples):
            noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), s), x.shape[1:])
            grads[s, i] = np.abs(jax.grad(lambda z, t=targets[i]: f(z[None])[0, t])(x[i] + stdev * noise))
    mean, square = grads.mean(0), (grads ** 2).mean(0)
    want = {"smoothgrad": mean, "smoothgrad_sq": square, "vargrad": square - mean ** 2}
    for nt_type, value in want.items():
        got = jaxviz.smoothgrad(f, x, nt_type=nt_type, nt_samples=samples, stdevs=stdev, seed=seed, targets=targets,
                                chunk_size=5)
        assert got.method == nt_type
        assert_close(got.attributions, value, scale=square if nt_type == "vargrad" else value, err_msg=nt_type)


def test_every_unit_at_once_equals_per_unit_calls(cnn_pair_jax):
    net, x = cnn_pair_jax
    f, units = net.layer_fn("fc1"), [0, 5, 9, 15]
    for method in (jaxviz.saliency, jaxviz.input_x_gradient, jaxviz.integrated_gradients):
        kwargs = {"n_steps": 4} if method is jaxviz.integrated_gradients else {}
        together = method(f, x, params=net.variables, units=units, **kwargs)
        assert together.attributions.shape == (*x.shape, 4)
        for j, u in enumerate(units):
            alone = method(f, x, params=net.variables, targets=u, **kwargs)
            assert_close(together.attributions[..., j], alone.attributions, err_msg=f"{method.__name__} unit {u}")
        if method is jaxviz.integrated_gradients:
            assert together.delta.shape == (len(x), 4)
    cam = jaxviz.grad_cam(net, x, layer="conv4", output_layer="fc1", units=units)
    for j, u in enumerate(units):
        assert_close(cam.attributions[..., j], jaxviz.grad_cam(net, x, layer="conv4", output_layer="fc1",
                                                               targets=u).attributions)


@pytest.fixture(scope="module")
def cnn_pair_jax():
    model = make_tiny_model()
    variables = randomize_variables(jaxviz.init_variables(model, jax.random.key(0)), seed=0)
    net = jaxviz.from_cnn(model, variables, [str(i) for i in range(10)])
    return net, net.to_input(make_uint8_images(5, 1))


def test_chunk_size_does_not_change_results(cnn_pair_jax):
    net, x = cnn_pair_jax
    f = net.layer_fn("logits")
    runs = [jaxviz.integrated_gradients(f, x, params=net.variables, targets=3, n_steps=5, chunk_size=c)
            for c in (1, 7, None)]
    assert runs[0].chunk_size == 1 and runs[1].chunk_size <= 7 and runs[2].chunk_size == 25
    for run in runs[1:]:
        assert_close(run.attributions, runs[0].attributions)
        assert_close(run.delta, runs[0].delta, scale=np.abs(runs[0].attributions).sum(axis=(1, 2, 3)))
    cams = [jaxviz.grad_cam(net, x, targets=3, chunk_size=c) for c in (1, 2, None)]
    for cam in cams[1:]:
        assert_close(cam.attributions, cams[0].attributions)


@pytest.mark.slow
def test_same_result_on_four_devices(tmp_path):
    script = textwrap.dedent("""
        import json, sys, jax, numpy as np
        sys.path.insert(0, sys.argv[2])
        import jaxviz
        from test_gradients import tiny_logits, FIXTURE
        x = np.concatenate([FIXTURE["x"]] * 3)
        many = jaxviz.integrated_gradients(tiny_logits, x, targets=1, n_steps=5, chunk_size=12)
        np.save(sys.argv[1] + "/ig.npy", many.attributions)
        print(json.dumps({"devices": len(jax.devices()), "chunk": many.chunk_size}))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(ROOT / "tests")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["chunk"] % 4 == 0
    here = jaxviz.integrated_gradients(tiny_logits, np.concatenate([FIXTURE["x"]] * 3), targets=1, n_steps=5)
    assert_close(np.load(tmp_path / "ig.npy"), here.attributions)


def test_second_call_does_not_retrace():
    traces = []

    def f(v):
        traces.append(v.shape)
        return tiny_logits(v)

    x = FIXTURE["x"]
    first = jaxviz.integrated_gradients(f, x, targets=[0, 1, 2], n_steps=4)
    after = len(traces)
    again = jaxviz.integrated_gradients(f, x, targets=[0, 1, 2], n_steps=4)
    other = jaxviz.integrated_gradients(f, x * 0.5, targets=[2, 2, 0], n_steps=4, baselines=0.3)
    jaxviz.smoothgrad(f, x, targets=1, nt_samples=3)
    after_noise = len(traces)
    jaxviz.smoothgrad(f, x, targets=2, nt_samples=3, seed=5, stdevs=0.5)  # seed and noise level are data
    assert after > 0 and len(traces) == after_noise, f"retraced: {traces[after:]}"
    np.testing.assert_array_equal(first.attributions, again.attributions)
    assert not np.allclose(other.attributions, first.attributions)


def test_second_grad_cam_call_does_not_retrace():
    traces = []

    def apply(variables, x, layer):
        return _apply(variables, x, layer)

    def apply_perturbed(variables, x, layer, delta, output_layer):
        traces.append(x.shape)
        return _apply_perturbed(variables, x, layer, delta, output_layer)

    net = jaxviz.from_function(apply, {}, layer_names=("tanh", "pool", "logits"), input_shape=(6, 7, 2),
                               apply_perturbed=apply_perturbed)
    first = jaxviz.grad_cam(net, FIXTURE["x"], layer="pool", targets=[0, 1, 2])
    after = len(traces)
    jaxviz.grad_cam(net, FIXTURE["x"] * 0.5, layer="pool", targets=[3, 3, 3])
    again = jaxviz.grad_cam(net, FIXTURE["x"], layer="pool", targets=[0, 1, 2])
    assert after > 0 and len(traces) == after, f"retraced: {traces[after:]}"
    np.testing.assert_array_equal(first.attributions, again.attributions)


# ------------------------------------------------------------------ (e) bad input, before compiling


@pytest.mark.parametrize("call, error, words", [
    (lambda x: jaxviz.integrated_gradients(linear, x, method="simpson"), ValueError, ["method", "gausslegendre"]),
    (lambda x: jaxviz.integrated_gradients(linear, x, n_steps=0), ValueError, ["n_steps", ">= 1"]),
    (lambda x: jaxviz.integrated_gradients(linear, x, n_steps=1, method="riemann_left"), ValueError,
     ["n_steps", "two steps"]),
    (lambda x: jaxviz.integrated_gradients(linear, x, n_steps=2.5), TypeError, ["n_steps"]),
    (lambda x: jaxviz.integrated_gradients(linear, x, baselines=np.zeros((3, 3))), ValueError,
     ["baselines", "shape (3, 3)"]),
    (lambda x: jaxviz.integrated_gradients(linear, x, baselines=np.nan), ValueError, ["baselines", "NaN"]),
    (lambda x: jaxviz.smoothgrad(linear, x, stdevs=-0.1), ValueError, ["stdevs", "non-negative"]),
    (lambda x: jaxviz.smoothgrad(linear, x, nt_type="smooth"), ValueError, ["nt_type", "vargrad"]),
    (lambda x: jaxviz.smoothgrad(linear, x, nt_samples=0), ValueError, ["nt_samples"]),
    (lambda x: jaxviz.smoothgrad(linear, x, nt_type="vargrad", nt_samples=1), ValueError,
     ["nt_samples: expected an int in [2, ", "VarGrad: the variance of one sample is 0", "got 1"]),
    (lambda x: jaxviz.smoothgrad(linear, x, seed=2**40), ValueError, ["seed: expected an int in [0, 4294967295]"]),
    (lambda x: jaxviz.smoothgrad(linear, x, seed=2**32), ValueError, ["seed", "got 4294967296"]),
    (lambda x: jaxviz.smoothgrad(linear, x, seed=-1), ValueError, ["seed", "got -1"]),
    (lambda x: jaxviz.saliency(lambda v: jnp.round(linear(v)).astype(jnp.int32), x), TypeError,
     ["f: expected float outputs, got int32", "zero everywhere"]),
    (lambda x: jaxviz.integrated_gradients(lambda v: linear(v) > 0, x), TypeError, ["f: ", "got bool"]),
    (lambda x: jaxviz.saliency(linear, x, targets=[0, 3]), ValueError, ["targets", "[0, 3)"]),
    (lambda x: jaxviz.saliency(linear, x, targets=[0]), ValueError, ["targets", "shape (2,)"]),
    (lambda x: jaxviz.saliency(linear, x, targets=[0.5, 1.0]), TypeError, ["targets"]),
    (lambda x: jaxviz.saliency(linear, x, targets=0, units=[1]), ValueError, ["targets, units"]),
    (lambda x: jaxviz.saliency(linear, x, units=[7]), ValueError, ["units", "[0, 3)"]),
    (lambda x: jaxviz.saliency(linear, x, abs="yes"), TypeError, ["abs"]),
    (lambda x: jaxviz.saliency(lambda v: v * 2, x), ValueError, ["f", "score_fn"]),
    (lambda x: jaxviz.saliency(linear, x.at[0, 0, 0, 0].set(jnp.nan)), ValueError, ["x", "NaN"]),
    (lambda x: jaxviz.saliency(linear, np.zeros((2, 4, 5, 2), np.uint8)), TypeError, ["x", "floating"]),
])
def test_bad_input_raises_clear_errors(call, error, words):
    x = jnp.asarray(np.asarray(jax.random.uniform(jax.random.key(9), (2, 4, 5, 2)), np.float32))
    with pytest.raises(error) as info:
        call(x)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_grad_cam_bad_input(tiny_net, cnn_pair_jax):
    x = FIXTURE["x"]
    cases = [
        (dict(layer="logits"), ValueError, ["layer", "not (N, h, w, channels)", "tanh, pool"]),
        (dict(layer="nope"), ValueError, ["layer", "unknown"]),
        (dict(layer="tanh", output_layer="tanh"), ValueError, ["output_layer", "after 'tanh'"]),
        (dict(interpolation="cubic"), ValueError, ["interpolation", "bilinear"]),
        (dict(targets=[0, 1, 9]), ValueError, ["targets", "[0, 4)"]),
        (dict(relu=1), TypeError, ["relu"]),
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error) as info:
            jaxviz.grad_cam(tiny_net, x, **kwargs)
        for word in words:
            assert word in str(info.value), (kwargs, word, str(info.value))
    plain = jaxviz.from_function(_apply, {}, layer_names=("tanh", "pool", "logits"), input_shape=(6, 7, 2))
    with pytest.raises(ValueError, match="apply_perturbed"):
        jaxviz.grad_cam(plain, x)
    net, cnn_x = cnn_pair_jax
    with pytest.raises(ValueError, match="input shape"):
        jaxviz.grad_cam(net, x)
    assert jaxviz.grad_cam(net, cnn_x, targets=0).layer == "pool2"  # the last layer with >= 7x7 maps
