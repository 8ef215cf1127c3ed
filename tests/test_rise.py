"""RISE against a numpy loop over masks, its masks against a numpy rebuild of the paper's construction,
seeding, chunking and device invariance, constant memory in the number of masks, and bad input."""

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

from jaxviz.engine import perturb
from jaxviz.methods.rise import Rise, rise, rise_masks

from numerics import assert_close

ROOT = Path(__file__).resolve().parents[1]
N, H, W, C = 2, 12, 10, 3
LINEAR_W = np.asarray(jax.random.normal(jax.random.key(10), (H * W * C, 4)), np.float32) / 10
CONV_K = np.asarray(jax.random.normal(jax.random.key(11), (3, 3, C, 3)), np.float32)


def linear(v):
    """An affine f: (N, H, W, C) -> (N, 4)."""
    return v.reshape(v.shape[0], -1) @ LINEAR_W + jnp.arange(4.0)


def conv(v):
    """A small conv net: 3x3 conv, relu, spatial mean -> (N, 3)."""
    h = jax.lax.conv_general_dilated(v, CONV_K, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h - 0.2).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def x():
    return np.asarray(jax.random.uniform(jax.random.key(2), (N, H, W, C)), np.float32)


def _reference(f, x, masks, fill):
    """``sum_i f(x * M_i + fill * (1 - M_i)) * M_i / (M * mean(M))``, one mask at a time, in float64."""
    total = 0.0
    for m in masks:
        m = m[None, :, :, None]
        out = np.asarray(f(x * m + fill * (1 - m)), np.float64)  # (N, U)
        total = total + out[:, None, None, :] * m.astype(np.float64)
    return total / (len(masks) * masks.astype(np.float64).mean())


def _upsample(grid, out_h, out_w):
    """Bilinear upsampling with half-pixel centres and coordinates clamped at the borders, in numpy."""
    def weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        t = src - lo
        mat = np.zeros((n_out, n_in))
        np.add.at(mat, (np.arange(n_out), lo), 1 - t)
        np.add.at(mat, (np.arange(n_out), hi), t)
        return mat
    return weights(grid.shape[0], out_h) @ grid @ weights(grid.shape[1], out_w).T


def _numpy_masks(h, w, *, indices, cells, p, seed):
    """RISE keep masks rebuilt: the same jax.random draws, the upsampling and crop in numpy."""
    ch, cw = -(-h // cells), -(-w // cells)
    out = []
    for i in indices:
        grid_key, shift_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
        grid = np.asarray(jax.random.bernoulli(grid_key, p, (cells, cells)), np.float64)
        dy, dx = np.asarray(jax.random.randint(shift_key, (2,), 0, jnp.array([ch, cw])))
        assert 0 <= dy < ch and 0 <= dx < cw
        out.append(_upsample(grid, (cells + 1) * ch, (cells + 1) * cw)[dy:dy + h, dx:dx + w])
    return np.stack(out)


# ------------------------------------------------------------------ (a) user masks == numpy loop


@pytest.mark.parametrize("f", [linear, conv], ids=["linear", "conv"])
@pytest.mark.parametrize("kind", ["soft", "binary"])
def test_user_masks_equal_numpy_loop(x, f, kind):
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(24, H, W)).astype(np.float32)
    if kind == "binary":
        masks = (masks < 0.4).astype(np.float32)
    result = rise(f, x, masks=masks, fill=0.3, chunk_size=10)
    want = _reference(f, x, masks, 0.3)
    assert isinstance(result, Rise) and result.maps.dtype == np.float32
    assert result.maps.shape == (N, H, W, want.shape[-1])
    assert result.num_masks == 24 and result.p == pytest.approx(masks.astype(np.float64).mean())
    assert_close(result.maps, want)
    assert_close(result.base, np.asarray(f(x)))


def test_per_channel_fill_and_scalar_output(x):
    masks = (np.random.default_rng(1).uniform(size=(9, H, W)) < 0.5).astype(np.float32)
    fill = np.array([0.1, 0.5, 0.9], np.float32)

    def brightness(v):
        return v.mean(axis=(1, 2, 3))  # one value per image: maps are (N, H, W)

    result = rise(brightness, x, masks=masks, fill=fill)
    want = _reference(lambda v: brightness(v)[:, None], x, masks, fill)[..., 0]
    assert result.maps.shape == (N, H, W)
    assert_close(result.maps, want)


# ------------------------------------------------------------------ (b) masks made on the device


@pytest.mark.parametrize("h,w,cells,p,seed", [(12, 10, 3, 0.5, 0), (12, 10, 5, 0.3, 7), (7, 9, 1, 0.8, 3),
                                              (16, 16, 4, 1.0, 1)])
def test_device_masks_match_numpy_rebuild(h, w, cells, p, seed):
    got = rise_masks(h, w, num_masks=6, cells=cells, p=p, seed=seed, start=5)
    want = _numpy_masks(h, w, indices=range(5, 11), cells=cells, p=p, seed=seed)
    assert got.shape == (6, h, w) and got.dtype == np.float32
    assert_close(got, want, scale=1.0)
    assert got.min() >= 0 and got.max() <= 1
    if p == 1.0:
        np.testing.assert_array_equal(got, 1.0)


def test_rise_uses_the_masks_rise_masks_returns(x):
    generated = rise(linear, x, num_masks=40, cells=3, p=0.4, seed=5)
    masks = rise_masks(H, W, num_masks=40, cells=3, p=0.4, seed=5)
    given = rise(linear, x, masks=masks)
    assert generated.p == 0.4 and generated.num_masks == 40
    # the same sums; the normalisations differ (nominal p vs the masks' mean)
    assert_close(generated.maps * 40 * 0.4, given.maps * 40 * given.p)
    assert_close(generated.maps, _reference(linear, x, masks, 0.0) * masks.mean() / 0.4)


def test_masks_keep_about_p_of_the_pixels():
    masks = rise_masks(32, 32, num_masks=300, cells=7, p=0.3, seed=0)
    assert abs(masks.mean() - 0.3) < 0.03
    assert len(np.unique(masks.reshape(300, -1), axis=0)) == 300


# ------------------------------------------------------------------ (c) seeds


def test_seeded_and_reproducible(x):
    first = rise(conv, x, num_masks=30, cells=4, seed=3)
    again = rise(conv, x, num_masks=30, cells=4, seed=3)
    other = rise(conv, x, num_masks=30, cells=4, seed=4)
    np.testing.assert_array_equal(first.maps, again.maps)  # the same program on the same inputs
    assert not np.allclose(first.maps, other.maps)
    a, b = (rise_masks(H, W, num_masks=30, cells=4, seed=s) for s in (3, 4))
    np.testing.assert_array_equal(a, rise_masks(H, W, num_masks=30, cells=4, seed=3))
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------ (d) chunks and devices


def test_chunk_size_does_not_change_results(x):
    results = [rise(conv, x, num_masks=45, cells=3, chunk_size=c) for c in (1, 7, 44, None)]
    assert results[1].chunk_size <= 7 and results[3].chunk_size == 90
    for result in results[1:]:
        assert_close(result.maps, results[0].maps, err_msg=f"chunk {result.chunk_size}")


@pytest.mark.slow
def test_same_result_on_four_devices(tmp_path, x):
    script = textwrap.dedent("""
        import json, sys, jax, numpy as np
        from jaxviz.methods.rise import rise
        kernel = np.load(sys.argv[1] + "/kernel.npy")

        def conv(v):  # test_rise.conv
            h = jax.lax.conv_general_dilated(v, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jax.nn.relu(h - 0.2).mean(axis=(1, 2))

        x = np.load(sys.argv[1] + "/x.npy")
        many = rise(conv, x, num_masks=50, cells=3, seed=1, chunk_size=12)
        one = rise(conv, x, num_masks=50, cells=3, seed=1, chunk_size=12, devices=jax.devices()[:1])
        np.save(sys.argv[1] + "/maps.npy", many.maps)
        print(json.dumps({"devices": len(jax.devices()), "chunk": many.chunk_size,
                          "max_rel_diff": float(np.abs(many.maps - one.maps).max() / np.abs(one.maps).max())}))
    """)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "kernel.npy", CONV_K)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["chunk"] % 4 == 0
    assert report["max_rel_diff"] < 1e-5
    here = rise(conv, x, num_masks=50, cells=3, seed=1)
    assert_close(np.load(tmp_path / "maps.npy"), here.maps)


# ------------------------------------------------------------------ (e) memory does not grow with the masks


def test_accumulator_is_one_map_per_image_whatever_the_number_of_masks(x, monkeypatch):
    """By design: every chunk call takes and returns the (N, H, W, U) accumulator, its arguments have the
    same shapes for 64 and 640 masks (the masks are a key, not an array), only the number of calls grows,
    and no per-mask output is ever produced (``perturbed_outputs`` is not used)."""
    calls = []
    real = perturb._sum_program

    def spy(*args):
        program = real(*args)

        def run(*arrays):
            shapes = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), arrays)
            out = program(*arrays)
            calls.append((shapes, tuple(out.shape)))
            return out
        return run

    def forbidden(*args, **kwargs):
        raise AssertionError("RISE must not stream per-mask outputs")

    monkeypatch.setattr(perturb, "_sum_program", spy)
    monkeypatch.setattr(perturb, "perturbed_outputs", forbidden)
    runs = {}
    for num_masks in (64, 640):
        calls.clear()
        result = rise(linear, x, num_masks=num_masks, cells=3, chunk_size=32)
        assert result.chunk_size == 32 and result.maps.shape == (N, H, W, 4)
        assert len(calls) == N * num_masks // 32  # chunks of a fixed size: time grows, memory does not
        assert {out for _, out in calls} == {(N, H, W, 4)}  # the accumulator, nothing per mask
        assert len({repr(shapes) for shapes, _ in calls}) == 1
        runs[num_masks] = calls[0][0]
    assert repr(runs[64]) == repr(runs[640])  # the same argument shapes: no array grows with num_masks
    assert runs[64][4] == ((N, H, W, 4), "float32")


# ------------------------------------------------------------------ (f) units


def test_units_keep_the_right_outputs(x):
    full = rise(linear, x, num_masks=20, cells=2)
    some = rise(linear, x, num_masks=20, cells=2, units=[3, 0])
    mask = rise(linear, x, num_masks=20, cells=2, units=np.array([False, True, False, True]))
    assert some.units == (3, 0) and mask.units == (1, 3) and full.units is None
    assert_close(some.maps, full.maps[..., [3, 0]], scale=full.maps)
    assert_close(some.base, full.base[:, [3, 0]])
    assert_close(mask.maps, full.maps[..., [1, 3]], scale=full.maps)


def test_params_are_an_argument_and_the_result_is_frozen(x):
    def f(params, v):
        return v.reshape(v.shape[0], -1) @ params["w"]

    result = rise(f, x, params={"w": LINEAR_W}, num_masks=16, cells=2)
    plain = rise(lambda v: v.reshape(v.shape[0], -1) @ LINEAR_W, x, num_masks=16, cells=2)
    assert_close(result.maps, plain.maps)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.maps = None


# ------------------------------------------------------------------ (g) bad input


def _ones(shape, value=1.0):
    return np.full(shape, value, np.float32)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(num_masks=0), ValueError, "num_masks.*>= 1.*got 0"),
    (dict(num_masks=2.5), TypeError, "num_masks.*int.*2.5"),
    (dict(num_masks=True), TypeError, "num_masks"),
    (dict(num_masks=2**31), ValueError, "num_masks"),
    (dict(cells=0), ValueError, "cells.*\\[1, 10\\].*got 0"),
    (dict(cells=11), ValueError, "cells.*\\[1, 10\\].*got 11"),
    (dict(cells=3.0), TypeError, "cells.*int"),
    (dict(p=0), ValueError, "p: .*\\(0, 1\\].*got 0"),
    (dict(p=1.5), ValueError, "p: .*\\(0, 1\\]"),
    (dict(p=float("nan")), ValueError, "p: .*nan"),
    (dict(p="half"), TypeError, "p: "),
    (dict(seed=1.5), TypeError, "seed.*int"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(masks=_ones((5, H, W + 1))), ValueError, f"masks.*\\(M, {H}, {W}\\).*\\(5, {H}, {W + 1}\\)"),
    (dict(masks=_ones((H, W))), ValueError, "masks.*shape"),
    (dict(masks=_ones((0, H, W))), ValueError, "masks.*M >= 1"),
    (dict(masks=_ones((3, H, W), np.nan)), ValueError, "masks.*NaN"),
    (dict(masks=_ones((3, H, W), 1.5)), ValueError, "masks.*\\[0, 1\\].*1.5"),
    (dict(masks=_ones((3, H, W), -0.5)), ValueError, "masks.*\\[0, 1\\]"),
    (dict(masks=_ones((3, H, W), 0.0)), ValueError, "masks.*all zeros"),
    (dict(masks=np.full((3, H, W), "a")), TypeError, "masks.*dtype"),
    (dict(masks=[[0.5]]), TypeError, "masks.*list"),
    (dict(masks=_ones((3, H, W), 0.5), num_masks=5), ValueError,
     "^num_masks: expected None with masks \\(their number, 3, is used\\), got 5$"),
    (dict(seed=2**32), ValueError, r"^seed: expected an int in \[0, 4294967295\], got 4294967296$"),
    (dict(seed=-1), ValueError, r"^seed: expected an int in \[0, 4294967295\], got -1$"),
    (dict(masks=_ones((3, H, W), 0.5), seed=-1), ValueError, "seed"),  # refused even where it is unused
    (dict(fill=np.nan), ValueError, "fill.*NaN"),
    (dict(fill=np.zeros(4)), ValueError, "fill"),
    (dict(units=[4]), ValueError, "units"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(memory_budget=-1), ValueError, "memory_budget"),
])
def test_bad_options_raise_clear_errors(x, kwargs, error, words):
    traces = []

    def f(v):
        traces.append(v.shape)
        return linear(v)

    with pytest.raises(error, match=words):
        rise(f, x, **{"num_masks": 8, **kwargs})
    if not {"fill", "units", "chunk_size", "memory_budget"} & set(kwargs):  # RISE's own checks come first
        assert traces == [], "f was traced before the arguments were checked"


def test_bad_x_and_f_raise_clear_errors(x):
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN"):
        rise(linear, bad, num_masks=4)
    with pytest.raises(ValueError, match="x: expected rank 4"):
        rise(linear, x[0], num_masks=4)
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        rise(linear, (x * 255).astype(np.uint8), num_masks=4)
    with pytest.raises(TypeError, match="x: expected an array"):
        rise(linear, "image", num_masks=4)
    with pytest.raises(TypeError, match="f: expected a callable"):
        rise("model", x, num_masks=4)
    with pytest.raises(ValueError, match="cells.*\\[1, 5\\]"):
        rise_masks(5, 8, num_masks=2, cells=6)


# ------------------------------------------------------------------ (h) compiled once


def test_second_call_new_seed_and_new_images_do_not_retrace(x):
    traces = []

    def f(v):
        traces.append(v.shape)
        return linear(v)

    first = rise(f, x, num_masks=20, cells=3, seed=0)
    after_first = len(traces)
    again = rise(f, x, num_masks=20, cells=3, seed=0)
    reseeded = rise(f, x, num_masks=20, cells=3, seed=9, p=0.7)  # seed and p are data, not constants
    other = rise(f, x[::-1] * 0.5, num_masks=20, cells=3, seed=0)
    assert after_first > 0
    assert len(traces) == after_first, f"retraced: {traces[after_first:]}"
    np.testing.assert_array_equal(first.maps, again.maps)
    assert not np.allclose(reseeded.maps, first.maps) and not np.allclose(other.maps, first.maps)
    masks = rise_masks(H, W, num_masks=20, cells=3)
    rise(f, x, masks=masks)
    after_masks = len(traces)
    rise(f, x, masks=masks[::-1] * 0.5)
    assert len(traces) == after_masks, "new masks of the same shape retraced"


def test_given_masks_with_their_own_count_are_accepted(x):
    masks = rise_masks(H, W, num_masks=6, cells=3, seed=2)
    same = rise(linear, x, masks=masks, num_masks=6)
    plain = rise(linear, x, masks=masks)
    assert same.num_masks == plain.num_masks == 6
    np.testing.assert_array_equal(same.maps, plain.maps)


def test_rise_weighted_sum_has_one_precision_for_rise_and_dataset_runs():
    """``rise()`` and a RISE dataset run accumulate with the same function at ``MASK_SUM_PRECISION`` (full float32
    on every backend; TF32/bfloat16 passes would make them disagree on GPUs and TPUs). That the two agree to 1e-5 of
    the max on a tiny network is tests/test_runs.py::test_aggregates_equal_numpy_reductions_of_the_grid[rise]."""
    from jaxviz.runs import program

    assert program.mask_weighted_sum_of_chunk is perturb.mask_weighted_sum_of_chunk
    assert perturb.MASK_SUM_PRECISION == jax.lax.Precision.HIGHEST
    rng = np.random.default_rng(0)
    keep, out = rng.random((6, 3, 4)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    slot = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]] * np.array([1, 1, 1, 1, 1, 0], np.float32)[:, None]
    want = np.zeros((3, 3, 4, 2))
    for c in range(6):
        want[slot[c].argmax()] += slot[c].max() * keep[c][..., None] * out[c]
    assert_close(np.asarray(perturb.mask_weighted_sum_of_chunk(keep, out, slot)), want)
    dots = [e for e in jax.make_jaxpr(perturb.mask_weighted_sum_of_chunk)(keep, out, slot).eqns
            if e.primitive.name == "dot_general"]
    assert dots and all(set(e.params["precision"]) == {jax.lax.Precision.HIGHEST} for e in dots)


def test_num_masks_default_has_one_owner():
    """``NUM_MASKS`` is ``rise``'s default and RISE's option default (``RiseOptions``), which the comparison,
    dataset runs and the command line read; the report gives its own cheaper ``rise_masks``."""
    import jaxviz
    from jaxviz.cli import build_parser
    from jaxviz.methods.registry import METHODS
    from jaxviz.methods.rise import NUM_MASKS

    assert NUM_MASKS == 4000  # the value before it had one owner
    x = jnp.asarray(np.random.default_rng(0).random((1, 8, 8, 1), np.float32))
    one = rise(lambda x: x.sum((1, 2)), x, cells=2, fill=0.0)
    assert one.num_masks == NUM_MASKS
    assert METHODS["rise"].options().num_masks == NUM_MASKS
    parser = build_parser()
    assert parser.parse_args(["faithfulness"]).num_masks == NUM_MASKS
    assert parser.parse_args(["attribute", "--method", "rise", "--out", "o"]).num_masks == NUM_MASKS
    assert jaxviz.ReportSettings().rise_masks == 1000  # the report's comparison: a quarter, its own setting
