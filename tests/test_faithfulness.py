"""Deletion / insertion curves and MuFidelity against per-step and per-subset Python loops, hand-computed
cases, the on-device masks against their host description, invariance (chunks, devices), no retracing, and
bad input."""

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

from jaxviz.evaluation.faithfulness import Curve, MuFidelity, deletion_curve, insertion_curve, mu_fidelity

from numerics import assert_close

ROOT = Path(__file__).resolve().parents[1]
N, H, W, C, U = 3, 8, 8, 3, 4


@pytest.fixture(scope="module")
def x():
    return np.asarray(jax.random.uniform(jax.random.key(0), (N, H, W, C)), np.float32)


@pytest.fixture(scope="module")
def attribution():
    return np.asarray(jax.random.normal(jax.random.key(1), (N, H, W)), np.float32)


@pytest.fixture(scope="module")
def weights():
    return np.asarray(jax.random.normal(jax.random.key(2), (H, W, C, U)), np.float32)


@pytest.fixture(scope="module")
def linear(weights):
    return jax.jit(lambda v: jnp.einsum("nhwc,hwcu->nu", v, weights))


@pytest.fixture(scope="module")
def conv():
    kernel = jax.random.normal(jax.random.key(3), (3, 3, C, 5)) / 3
    dense = jax.random.normal(jax.random.key(4), (5, U))

    def f(v):
        h = jax.lax.conv_general_dilated(v, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h).mean(axis=(1, 2)) @ dense

    return jax.jit(f)


# ------------------------------------------------------------------ references, written independently


def _order(a):
    """Pixels by attribution, descending, ties to the lower flat index: a Python sort."""
    flat = [float(v) for v in np.ravel(a)]
    return sorted(range(len(flat)), key=lambda p: (-flat[p], p))


def _count(k, pixels, steps):
    return int(np.floor(k * pixels / steps + 0.5))  # round half up, as documented


def _curve_loop(f, x, attribution, steps, fill, mode):
    """f on each x_k, built in numpy, one step (all images) at a time: (N, steps + 1, U)."""
    fill = np.broadcast_to(np.asarray(fill, np.float32), x.shape[1:])
    orders = [_order(a) for a in attribution]
    out = []
    for k in range(steps + 1):
        xk = x.copy() if mode == "deletion" else np.broadcast_to(fill, x.shape).copy()
        for n, order in enumerate(orders):
            ys, xs = np.unravel_index(np.array(order[:_count(k, H * W, steps)], int), (H, W))
            xk[n, ys, xs] = fill[ys, xs] if mode == "deletion" else x[n, ys, xs]
        out.append(np.asarray(f(xk)))
    return np.stack(out, axis=1)


def _cells(h, w, grid):
    return np.array([[(y * grid // h) * grid + (c * grid // w) for c in range(w)] for y in range(h)])


def _subsets(seed, num, grid, fraction):
    size = max(1, int(np.floor(fraction * grid**2 + 0.5)))
    out = np.zeros((num, grid**2), bool)
    for i in range(num):
        out[i, np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), i), grid**2))[:size]] = True
    return out


def _mu_loop(f, x, attribution, grid, fraction, num, seed, fill):
    subsets, cells = _subsets(seed, num, grid, fraction), _cells(H, W, grid)
    base = np.asarray(f(x))
    drops, sums = [], []
    for subset in subsets:
        pixels = subset[cells]
        drops.append(base - np.asarray(f(np.where(pixels[None, :, :, None], np.float32(fill), x))))
        sums.append((attribution * pixels).sum(axis=(1, 2), dtype=np.float64))
    drops, sums = np.stack(drops, 1), np.stack(sums, 1)  # (N, S, U), (N, S)
    score = np.array([[np.corrcoef(sums[n], drops[n, :, u])[0, 1] for u in range(U)] for n in range(N)])
    return subsets, base, drops, sums, score


# ------------------------------------------------------------------ deletion and insertion


@pytest.mark.parametrize("model", ["linear", "conv"])
@pytest.mark.parametrize("mode,steps,fill", [("deletion", 10, 0.0), ("insertion", 7, [0.2, 0.5, 0.8]),
                                             ("deletion", 64, 0.4), ("insertion", 50, 0.0)])  # steps <= the 64 pixels
def test_curves_match_a_per_step_loop(request, x, attribution, model, mode, steps, fill):
    f = request.getfixturevalue(model)
    result = deletion_curve(f, x, attribution, mode=mode, steps=steps, fill=np.asarray(fill, np.float32),
                            chunk_size=50)
    want = _curve_loop(f, x, attribution, steps, fill, mode)
    assert result.curve.shape == (N, steps + 1, U) and result.auc.shape == (N, U)
    assert_close(result.curve, want)
    assert_close(result.auc, ((want[:, 1:] + want[:, :-1]) / 2).sum(1) / steps, scale=want)
    np.testing.assert_array_equal(result.counts, [_count(k, H * W, steps) for k in range(steps + 1)])
    assert result.mode == mode and result.steps == steps


def test_insertion_curve_is_deletion_curve_in_insertion_mode(linear, x, attribution):
    a = insertion_curve(linear, x, attribution, steps=5, fill=0.3)
    b = deletion_curve(linear, x, attribution, steps=5, fill=0.3, mode="insertion")
    np.testing.assert_array_equal(a.curve, b.curve)
    assert a.mode == "insertion"
    with pytest.raises(TypeError, match="mode"):
        insertion_curve(linear, x, attribution, mode="deletion")


def _pixels(v):
    return v.reshape(v.shape[0], -1)  # f = every pixel value: the curve shows the mask itself


def test_ties_go_to_the_lower_flat_index():
    x = np.ones((1, 2, 2, 1), np.float32)
    attribution = np.array([[[1.0, 2.0], [2.0, 0.0]]])  # order: pixel 1, pixel 2 (tie, lower index), 0, 3
    deletion = deletion_curve(_pixels, x, attribution, steps=4)
    np.testing.assert_array_equal(deletion.curve[0], [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1],
                                                      [0, 0, 0, 0]])
    insertion = insertion_curve(_pixels, x, attribution, steps=4)
    np.testing.assert_array_equal(insertion.curve[0], 1 - deletion.curve[0])


def test_step_counts_round_half_up():
    x = np.ones((1, 2, 3, 1), np.float32)
    result = deletion_curve(_pixels, x, np.zeros((1, 2, 3)), steps=4)  # k * 6 / 4 = 0, 1.5, 3, 4.5, 6
    np.testing.assert_array_equal(result.counts, [0, 2, 3, 5, 6])  # round-half-to-even would give 4 at k = 3
    np.testing.assert_array_equal((result.curve[0] == 0).sum(1), [0, 2, 3, 5, 6])
    np.testing.assert_array_equal(result.fractions, [0, 0.25, 0.5, 0.75, 1])


def test_auc_of_a_hand_computed_curve():
    x = np.array([4.0, 3.0, 2.0, 1.0], np.float32).reshape(1, 1, 4, 1)
    f = lambda v: v.sum(axis=(1, 2, 3))  # one value per image
    deletion = deletion_curve(f, x, x[..., 0], steps=4)  # deletes 4, 3, 2, 1 in turn
    assert_close(deletion.curve, np.array([[10.0, 6.0, 3.0, 1.0, 0.0]]))
    assert_close(deletion.auc, np.array([0.25 * (10 / 2 + 6 + 3 + 1 + 0 / 2)]))
    insertion = insertion_curve(f, x, x[..., 0], steps=4)
    assert_close(insertion.curve, np.array([[0.0, 4.0, 7.0, 9.0, 10.0]]))
    assert_close(insertion.auc, np.array([0.25 * (0 / 2 + 4 + 7 + 9 + 10 / 2)]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        deletion.auc = None


def test_targets_pick_a_slice_of_all_outputs(conv, x, attribution):
    targets = np.array([2, 0, 3])
    rows = np.arange(N)
    full = deletion_curve(conv, x, attribution, steps=6)
    picked = deletion_curve(conv, x, attribution, steps=6, targets=targets)
    assert isinstance(picked, Curve) and picked.curve.shape == (N, 7) and picked.auc.shape == (N,)
    np.testing.assert_array_equal(picked.curve, full.curve[rows, :, targets])  # the same program
    np.testing.assert_array_equal(picked.auc, full.auc[rows, targets])
    some = deletion_curve(conv, x, attribution, steps=6, units=[3, 1])
    assert some.units == (3, 1) and some.curve.shape == (N, 7, 2)
    assert_close(some.curve, full.curve[..., [3, 1]], scale=full.curve)
    full_mu = mu_fidelity(conv, x, attribution, grid=4, num_subsets=12)
    picked_mu = mu_fidelity(conv, x, attribution, grid=4, num_subsets=12, targets=targets)
    assert isinstance(picked_mu, MuFidelity) and picked_mu.score.shape == (N,) and picked_mu.drops.shape == (N, 12)
    np.testing.assert_array_equal(picked_mu.drops, full_mu.drops[rows, :, targets])
    assert_close(picked_mu.score, full_mu.score[rows, targets], rel=1e-12)  # numpy's float64 sums: other layouts


# ------------------------------------------------------------------ MuFidelity


@pytest.mark.parametrize("grid,fraction,fill", [(4, 0.2, 0.0), (3, 0.5, 0.7), (8, 0.05, 0.0)])
def test_mu_fidelity_matches_a_per_subset_loop(conv, x, attribution, grid, fraction, fill):
    result = mu_fidelity(conv, x, attribution, grid=grid, subset_fraction=fraction, num_subsets=20, seed=5,
                         fill=fill, chunk_size=16)
    subsets, base, drops, sums, score = _mu_loop(conv, x, attribution, grid, fraction, 20, 5, fill)
    np.testing.assert_array_equal(result.subsets, subsets)
    assert result.drops.shape == (N, 20, U) and result.score.shape == (N, U)
    assert_close(result.drops, drops, scale=base)
    assert_close(result.attribution_sums, sums)
    assert_close(result.score, score, rel=1e-4)  # a ratio of sums of float32 drops


def test_mu_fidelity_of_the_exact_linear_attribution_is_one(linear, weights, x):
    # f linear, fill 0: dropping a subset lowers f_t by exactly the sum of x * w_t over its pixels
    targets = np.array([1, 3, 0])
    exact = (x * np.moveaxis(weights[..., targets], -1, 0)).sum(-1)
    result = mu_fidelity(linear, x, exact, targets=targets, num_subsets=64)
    assert_close(result.drops, result.attribution_sums)
    assert_close(result.score, np.ones(N))
    assert (result.subsets.sum(1) == 13).all()  # round(0.2 * 64)


def test_constant_vectors_give_zero_correlation(x, attribution):
    flat = lambda v: jnp.zeros((v.shape[0], 2)) + 0 * v.sum()  # f ignores the image: every drop is 0
    assert (mu_fidelity(flat, x, attribution, grid=4, num_subsets=10).score == 0).all()
    # uniform attribution, equal cells (4 | 8): every subset has the same attribution sum
    uniform = mu_fidelity(_pixels, x, np.ones((N, H, W)), grid=4, num_subsets=10)
    assert np.ptp(uniform.attribution_sums) == 0 and (uniform.score == 0).all()


# ------------------------------------------------------------------ the masks made on the device


def test_device_masks_match_the_host_description(attribution):
    ones = np.ones((N, H, W, 1), np.float32)  # f = the pixels, fill 0: each output row is 1 - mask
    for mode, steps in [("deletion", 5), ("insertion", 9)]:
        result = deletion_curve(_pixels, ones, attribution, mode=mode, steps=steps, chunk_size=4)
        for n in range(N):
            rank = np.empty(H * W, int)
            rank[_order(attribution[n])] = np.arange(H * W)
            for k in (0, 1, steps // 2, steps):
                filled = rank < _count(k, H * W, steps)
                filled = filled if mode == "deletion" else ~filled
                np.testing.assert_array_equal(result.curve[n, k], 1 - filled, err_msg=f"{mode} image {n} step {k}")
    result = mu_fidelity(_pixels, ones, attribution, grid=3, subset_fraction=0.3, num_subsets=6, seed=11)
    subsets = _subsets(11, 6, 3, 0.3)
    np.testing.assert_array_equal(result.subsets, subsets)
    for n in range(N):  # drop = 1 on the subset's pixels
        np.testing.assert_array_equal(result.drops[n], subsets[:, _cells(H, W, 3)].reshape(6, -1))


# ------------------------------------------------------------------ invariance and compilation


def test_chunk_size_does_not_change_results(conv, x, attribution):
    curves = [deletion_curve(conv, x, attribution, steps=12, chunk_size=c) for c in (1, 7, None)]
    for result in curves[1:]:
        assert_close(result.curve, curves[0].curve, err_msg=f"chunk {result.chunk_size}")
    mus = [mu_fidelity(conv, x, attribution, grid=4, num_subsets=10, chunk_size=c) for c in (3, None)]
    assert_close(mus[1].drops, mus[0].drops, scale=conv(x))
    assert_close(mus[1].score, mus[0].score, rel=1e-4)


def test_second_call_does_not_retrace(weights, x, attribution):
    traces = []

    def f(v):
        traces.append(v.shape)
        return jnp.einsum("nhwc,hwcu->nu", v, weights)

    first = deletion_curve(f, x, attribution, steps=8)
    mu = mu_fidelity(f, x, attribution, grid=4, num_subsets=8)
    seen = len(traces)
    again = deletion_curve(f, x, attribution, steps=8)
    deletion_curve(f, x[::-1] * 0.5, -attribution, steps=8)  # new images and maps: the same programs
    mu_again = mu_fidelity(f, x, attribution[::-1], grid=4, num_subsets=8)
    assert seen > 0
    assert len(traces) == seen, f"retraced: {traces[seen:]}"
    np.testing.assert_array_equal(first.curve, again.curve)
    np.testing.assert_array_equal(mu.drops, mu_again.drops)  # same subsets, same images


@pytest.mark.slow
def test_same_deletion_curve_on_four_devices(tmp_path):
    script = textwrap.dedent("""
        import json, sys, jax, jax.numpy as jnp, numpy as np
        from jaxviz.evaluation.faithfulness import deletion_curve
        x = np.asarray(jax.random.uniform(jax.random.key(0), (5, 8, 8, 3)), np.float32)
        a = np.asarray(jax.random.normal(jax.random.key(1), (5, 8, 8)), np.float32)
        w = np.asarray(jax.random.normal(jax.random.key(2), (8 * 8 * 3, 4)), np.float32)
        f = lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w / 8)
        many = deletion_curve(f, x, a, steps=9, chunk_size=12)
        one = deletion_curve(f, x, a, steps=9, chunk_size=12, devices=jax.devices()[:1])
        np.save(sys.argv[1], many.curve)
        print(json.dumps({"devices": len(jax.devices()), "chunk": many.chunk_size,
                          "max_diff": float(np.abs(many.curve - one.curve).max())}))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "curve.npy")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["chunk"] % 4 == 0
    assert report["max_diff"] < 1e-5  # tanh outputs: the scale is 1
    x = np.asarray(jax.random.uniform(jax.random.key(0), (5, 8, 8, 3)), np.float32)
    a = np.asarray(jax.random.normal(jax.random.key(1), (5, 8, 8)), np.float32)
    w = np.asarray(jax.random.normal(jax.random.key(2), (8 * 8 * 3, 4)), np.float32)
    here = deletion_curve(lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w / 8), x, a, steps=9)
    assert_close(np.load(tmp_path / "curve.npy"), here.curve)


# ------------------------------------------------------------------ bad input


def _nan(shape, where):
    a = np.zeros(shape, np.float32)
    a[where] = np.nan
    return a


DELETION = deletion_curve
MU = mu_fidelity


@pytest.mark.parametrize("method,kwargs,error,words", [
    (DELETION, dict(steps=0), ValueError, r"steps: expected an int in \[1, 64\].*got 0"),
    (DELETION, dict(steps=2.5), TypeError, "steps"),
    (DELETION, dict(steps=True), TypeError, "steps"),
    (DELETION, dict(mode="erase"), ValueError, "mode.*'erase'"),
    (DELETION, dict(attribution=np.zeros((N, H, W, C))), ValueError,
     r"attribution: expected shape \(N, H, W\) = \(3, 8, 8\).*\(3, 8, 8, 3\).*sum the last axis"),
    (DELETION, dict(attribution=np.zeros((N, H))), ValueError, r"attribution.*got \(3, 8\)"),
    (MU, dict(attribution=np.zeros((N + 1, H, W))), ValueError, "attribution.*matching x"),
    (DELETION, dict(attribution=_nan((N, H, W), (1, 2, 3))), ValueError, "attribution.*1 NaN"),
    (MU, dict(attribution=np.full((N, H, W), np.inf)), ValueError, "attribution.*infinite"),
    (DELETION, dict(attribution=[[0.0]]), TypeError, "attribution: expected an array"),
    (DELETION, dict(attribution=np.zeros((N, H, W), bool)), TypeError, "attribution.*bool"),
    (DELETION, dict(x=_nan((N, H, W, C), (0, 0, 0, 0))), ValueError, "x: contains NaN"),
    (MU, dict(x=np.zeros((N, H, W, C), np.uint8)), TypeError, "x: expected a floating dtype"),
    (DELETION, dict(targets=[0, 1]), ValueError, r"targets: expected 3 integers.*shape \(2,\)"),
    (DELETION, dict(targets=[0.0, 1.0, 2.0]), ValueError, "targets.*float"),
    (DELETION, dict(targets=[0, 4, 1]), ValueError, r"targets: expected outputs in \[0, 4\)"),
    (MU, dict(targets=[0, 2, 1], units=[2, 3]), ValueError, r"targets: expected outputs among the kept units \[2, 3\], got 0"),
    (MU, dict(targets=[-1, 0, 0]), ValueError, "targets"),
    (DELETION, dict(f=lambda v: v.sum(axis=(1, 2, 3)), targets=[0, 0, 0]), ValueError,
     "targets: f returns one value per image"),
    (MU, dict(subset_fraction=0), ValueError, r"subset_fraction: expected a number in \(0, 1\], got 0"),
    (MU, dict(subset_fraction=1.5), ValueError, "subset_fraction"),
    (MU, dict(subset_fraction="0.2"), ValueError, "subset_fraction"),
    (MU, dict(grid=0), ValueError, r"grid: expected an int in \[1, 8\]"),
    (MU, dict(grid=9), ValueError, r"grid: expected an int in \[1, 8\].*got 9"),
    (MU, dict(grid=4.0), TypeError, "grid"),
    (MU, dict(num_subsets=1), ValueError, "num_subsets: expected an int >= 2, got 1"),
    (MU, dict(seed=-1), ValueError, "seed"),
    (DELETION, dict(steps=H * W + 1), ValueError, rf"steps: expected an int in \[1, {H * W}\] \(at most the "
     rf"{H * W} pixels.*got {H * W + 1}"),
    (DELETION, dict(steps=100_000, mode="insertion"), ValueError, "steps: expected an int in"),
    (MU, dict(fill="gray"), ValueError, "fill"),
    (DELETION, dict(chunk_size=0), ValueError, "chunk_size"),
])
def test_bad_input_raises_clear_errors_before_compiling(weights, x, attribution, method, kwargs, error, words):
    traces = []

    def f(v):
        traces.append(v.shape)
        return jnp.einsum("nhwc,hwcu->nu", v, weights)

    args = {"f": f, "x": x, "attribution": attribution, **kwargs}
    with pytest.raises(error, match=words):
        method(args.pop("f"), args.pop("x"), args.pop("attribution"), **args)
    assert len(traces) <= 1, "f was compiled"  # at most the probe of its output shape
