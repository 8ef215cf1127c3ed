"""Feature ablation over segments against a numpy loop, Captum's FeatureAblation fixtures (and Captum itself
when installed), the built-in segmentations, per-image maps with different segment counts, and bad input."""

import dataclasses
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.methods.ablation import Ablation, feature_ablation, grid_segments, slic_segments

from conftest import make_uint8_images
from numerics import assert_close

N, H, W, C = 3, 8, 9, 2
LINEAR_W = np.asarray(jax.random.normal(jax.random.key(20), (H * W * C, 5)), np.float32) / 10
CONV_K = np.asarray(jax.random.normal(jax.random.key(21), (3, 3, C, 4)), np.float32)


def linear(v):
    """An affine f: (N, H, W, C) -> (N, 5)."""
    return v.reshape(v.shape[0], -1) @ LINEAR_W - 0.5


def conv(v):
    """A small conv net: 3x3 conv, relu, spatial mean -> (N, 4)."""
    h = jax.lax.conv_general_dilated(v, CONV_K, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h + 0.1).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def x():
    return np.asarray(jax.random.uniform(jax.random.key(3), (N, H, W, C)), np.float32)


def _reference(f, x, labels, fill):
    """``f(x) - f(x with segment s filled)`` image by image, segment by segment, in numpy."""
    labels = np.broadcast_to(labels, (len(x), *x.shape[1:3]))
    size = labels.max() + 1
    base = np.asarray(f(x), np.float64)
    scores = np.zeros((len(x), size, *base.shape[1:]))
    for n in range(len(x)):
        for s in np.unique(labels[n]):
            inside = (labels[n] == s)[:, :, None]
            perturbed = np.where(inside, np.broadcast_to(fill, x.shape[1:]), x[n])[None].astype(np.float32)
            scores[n, s] = base[n] - np.asarray(f(perturbed), np.float64)[0]
    return base, scores


# ------------------------------------------------------------------ against a numpy loop


@pytest.mark.parametrize("f", [linear, conv], ids=["linear", "conv"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_map", "per_image_maps"])
def test_equals_numpy_loop(x, f, shared):
    rng = np.random.default_rng(0)
    if shared:
        segments = grid_segments(H, W, cells=(2, 3))
    else:
        segments = np.stack([rng.permutation(6)[grid_segments(H, W, cells=(3, 2))] for _ in range(N)])
    fill = np.array([0.2, 0.7], np.float32)
    result = feature_ablation(f, x, segments=segments, fill=fill, chunk_size=5)
    base, scores = _reference(f, x, segments, fill)
    assert isinstance(result, Ablation) and result.scores.shape == scores.shape
    assert_close(result.base, base)
    assert_close(result.scores, scores, scale=base)  # differences of outputs: at the scale of f
    labels = np.broadcast_to(segments, (N, H, W))
    want_maps = np.stack([scores[n][labels[n]] for n in range(N)])
    assert result.maps.shape == (N, H, W, scores.shape[-1]) and result.maps.dtype == np.float32
    assert_close(result.maps, want_maps, scale=base)
    assert result.counts.tolist() == [6] * N


def test_sign_is_original_minus_ablated(x):
    # f = mean brightness: removing any segment (fill 0) lowers it by its pixels' share
    segments = grid_segments(H, W, cells=3)
    result = feature_ablation(lambda v: v.mean(axis=(1, 2, 3)), x, segments=segments)
    assert result.scores.shape == (N, 9) and result.maps.shape == (N, H, W)
    assert (result.scores > 0).all()
    want = np.stack([[x[n][segments == s].sum() / x[n].size for s in range(9)] for n in range(N)])
    assert_close(result.scores, want, scale=result.base)


# ------------------------------------------------------------------ Captum's fixtures


def _multilayer(v):
    """Captum's BasicModel_MultiLayer (tests/helpers/basic_models.py) on 3 features laid out as a 1 x 3 image:
    identity, Linear(3, 4) with ones and bias (-10, 1, 1, 1), ReLU, Linear(4, 2) with ones and bias (-1, 1)."""
    h = jax.nn.relu(v.reshape(v.shape[0], 3) @ jnp.ones((3, 4)) + jnp.array([-10.0, 1.0, 1.0, 1.0]))
    return h @ jnp.ones((4, 2)) + jnp.array([-1.0, 1.0])


def _captum_conv_net(v):
    """Captum's BasicModel_ConvNet_One_Conv in JAX, NHWC, on v + 1 (its second input is all ones)."""
    v = v + 1.0
    h = jax.lax.conv_general_dilated(v, jnp.ones((3, 3, 1, 2)), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + jnp.array([-50.0, -75.0]))
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(v.shape[0], 8)  # torch's view(-1, 8) of NCHW
    return jax.nn.relu(h @ jnp.concatenate([jnp.ones((4, 5)), -jnp.ones((4, 3))], axis=1).T)


@pytest.mark.parametrize("inputs,mask,fill,expected", [
    # test_simple_ablation_with_mask: 392 - f(0, 0, 30) = 280, 392 - f(20, 50, 0) = 120
    ([[20.0, 50.0, 30.0]], [[0, 0, 1]], 0.0, [[280.0, 280.0, 120.0]]),
    # test_simple_ablation_with_baselines (baselines=4)
    ([[20.0, 50.0, 30.0]], [[0, 0, 1]], 4.0, [[248.0, 248.0, 104.0]]),
    # test_multi_sample_ablation_with_mask: one mask per example
    ([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]], [[[0, 0, 1]], [[1, 1, 0]]], 0.0,
     [[41.0, 41.0, 12.0], [280.0, 280.0, 120.0]]),
    # test_simple_ablation: every feature its own segment
    ([[20.0, 50.0, 30.0]], [[0, 1, 2]], 0.0, [[80.0, 200.0, 120.0]]),
])
def test_matches_captum_feature_ablation_fixtures(inputs, mask, fill, expected):
    # values from captum tests/attr/test_feature_ablation.py, target 0
    x = np.asarray(inputs, np.float32).reshape(-1, 1, 3, 1)
    result = feature_ablation(_multilayer, x, segments=np.asarray(mask), fill=fill, units=[0])
    assert_close(result.maps[:, 0, :, 0], np.asarray(expected))


@pytest.mark.parametrize("segments,expected", [
    (np.zeros((4, 4), int), np.full((4, 4), 67.0)),  # feature_mask=torch.tensor(0): one segment
    (np.arange(16).reshape(4, 4), np.array([[0.0, 2, 4, 3], [4, 9, 10, 7], [4, 13, 14, 11], [0, 0, 0, 0]])),
])
def test_matches_captum_conv_fixtures(segments, expected):
    # captum tests/attr/test_feature_ablation.py, test_simple_multi_input_conv, first input, target 0
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    result = feature_ablation(jax.jit(_captum_conv_net), x, segments=segments, units=[0])
    assert_close(result.maps[0, :, :, 0], expected)


def test_matches_captum_itself_when_installed():
    torch = pytest.importorskip("torch")  # not installed here: skipped
    captum_attr = pytest.importorskip("captum.attr")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7 * 9 * 2, 3)).astype(np.float32) / 5
    x = rng.uniform(size=(2, 7, 9, 2)).astype(np.float32)
    segments = grid_segments(7, 9, cells=3)

    def f_torch(v):  # NCHW -> NHWC flatten order
        return torch.tanh(v.permute(0, 2, 3, 1).reshape(v.shape[0], -1) @ torch.from_numpy(w))

    ours = feature_ablation(lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w), x, segments=segments, fill=0.25)
    mask = torch.from_numpy(np.broadcast_to(segments[None, None], (1, 2, 7, 9)).astype(np.int64).copy())
    theirs = captum_attr.FeatureAblation(f_torch).attribute(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), feature_mask=mask, baselines=0.25, target=1)
    assert_close(ours.maps[..., 1], theirs.numpy()[:, 0], scale=ours.base, rel=1e-4)  # two frameworks


# ------------------------------------------------------------------ per-image maps, chunks, compilation


def test_per_image_maps_with_different_segment_counts(x):
    # S = the largest count; labels an image lacks have empty masks and score exactly 0
    segments = np.stack([grid_segments(H, W, cells=2), grid_segments(H, W, cells=(1, 3)), np.zeros((H, W), int)])
    result = feature_ablation(conv, x, segments=segments)
    assert result.counts.tolist() == [4, 3, 1] and result.scores.shape == (N, 4, 4)
    np.testing.assert_array_equal(result.scores[1, 3:], 0.0)
    np.testing.assert_array_equal(result.scores[2, 1:], 0.0)
    base, scores = _reference(conv, x, segments, 0.0)
    assert_close(result.scores, scores, scale=base)
    assert_close(result.maps[2], np.broadcast_to(scores[2, 0], (H, W, 4)), scale=base)
    assert result.segments.dtype == np.int32 and result.segments.shape == (N, H, W)


def test_chunk_size_does_not_change_results(x):
    segments = grid_segments(H, W, cells=3)
    results = [feature_ablation(conv, x, segments=segments, chunk_size=c) for c in (1, 4, 26, None)]
    assert results[3].chunk_size == N * 9
    for result in results[1:]:
        assert_close(result.scores, results[0].scores, scale=results[0].base, err_msg=f"chunk {result.chunk_size}")


def test_units_params_and_frozen_result(x):
    segments = grid_segments(H, W, cells=2)
    full = feature_ablation(linear, x, segments=segments)
    some = feature_ablation(lambda p, v: v.reshape(v.shape[0], -1) @ p - 0.5, x, params=LINEAR_W,
                            segments=segments, units=[4, 1])
    assert some.units == (4, 1)
    assert_close(some.scores, full.scores[..., [4, 1]], scale=full.base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.scores = None
    assert full.maps is full.maps  # computed once


def test_second_call_new_images_and_new_maps_do_not_retrace(x):
    traces = []

    def f(v):
        traces.append(v.shape)
        return conv(v)

    segments = grid_segments(H, W, cells=2)
    first = feature_ablation(f, x, segments=segments)
    after_first = len(traces)
    again = feature_ablation(f, x, segments=segments)
    other = feature_ablation(f, x[::-1] * 0.5, segments=segments[::-1])  # same shape and count: data only
    assert after_first > 0
    assert len(traces) == after_first, f"retraced: {traces[after_first:]}"
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.allclose(other.scores, first.scores)


# ------------------------------------------------------------------ segmentations


def test_grid_segments_layout():
    np.testing.assert_array_equal(grid_segments(4, 4, cells=2),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    uneven = grid_segments(5, 7, cells=(2, 3))
    assert uneven.dtype == np.int32 and uneven.shape == (5, 7)
    np.testing.assert_array_equal(uneven[:, 0], [0, 0, 0, 3, 3])  # row r * rows // height
    np.testing.assert_array_equal(uneven[0], [0, 0, 0, 1, 1, 2, 2])  # col c * cols // width
    assert np.bincount(grid_segments(32, 32, cells=7).ravel()).min() >= 16
    np.testing.assert_array_equal(grid_segments(3, 2, cells=(3, 2)), np.arange(6).reshape(3, 2))
    with pytest.raises(ValueError, match="cells"):
        grid_segments(4, 4, cells=5)
    with pytest.raises(TypeError, match="cells"):
        grid_segments(4, 4, cells=2.0)
    with pytest.raises(ValueError, match="height"):
        grid_segments(0, 4, cells=1)


def test_slic_segments_with_scikit_image():
    pytest.importorskip("skimage.segmentation", reason="scikit-image is not installed (optional, for SLIC)")
    images = make_uint8_images(2, seed=0)
    segments = slic_segments(images, n_segments=20)
    assert segments.shape == (2, 32, 32) and segments.dtype == np.int32
    for labels in segments:
        np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    result = feature_ablation(lambda v: v.mean(axis=(1, 2, 3)), images.astype(np.float32) / 255, segments=segments)
    assert result.scores.shape[1] == segments.reshape(2, -1).max() + 1


def test_slic_segments_relabels_and_passes_options(monkeypatch):
    calls = []

    def fake_slic(image, *, n_segments, compactness, start_label, channel_axis):  # labels with gaps
        calls.append((image.shape, n_segments, compactness, start_label, channel_axis))
        return np.where(np.arange(image.shape[1])[None, :] < 2, 5, 9) * np.ones(image.shape[:2], int)

    segmentation = types.ModuleType("skimage.segmentation")
    segmentation.slic = fake_slic
    monkeypatch.setitem(sys.modules, "skimage", types.ModuleType("skimage"))
    monkeypatch.setitem(sys.modules, "skimage.segmentation", segmentation)
    segments = slic_segments(make_uint8_images(2, seed=1, size=4), n_segments=7, compactness=3)
    assert calls == [((4, 4, 3), 7, 3.0, 0, -1)] * 2
    np.testing.assert_array_equal(segments, np.broadcast_to([0, 0, 1, 1], (2, 4, 4)))
    assert segments.dtype == np.int32


def test_slic_segments_without_scikit_image_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"pip install scikit-image.*jaxviz\[slic\]"):
        slic_segments(make_uint8_images(1, seed=0))


def test_slic_segments_checks_its_arguments():
    with pytest.raises(TypeError, match="images_uint8.*uint8"):
        slic_segments(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="n_segments"):
        slic_segments(make_uint8_images(1, seed=0), n_segments=0)
    with pytest.raises(ValueError, match="compactness"):
        slic_segments(make_uint8_images(1, seed=0), compactness=float("nan"))


# ------------------------------------------------------------------ bad input


def _gappy():
    labels = grid_segments(H, W, cells=2)
    return np.where(labels == 1, 0, labels)  # labels 0, 2, 3: 1 is missing


@pytest.mark.parametrize("segments,error,words", [
    (_gappy(), ValueError, r"segments: .*every label.*lacks \[1\]"),
    (np.stack([grid_segments(H, W, cells=2), _gappy(), grid_segments(H, W, cells=2)]), ValueError,
     r"segments: .*map 1 .*lacks \[1\]"),
    (grid_segments(H, W, cells=2) - 1, ValueError, "segments: .*negative label -1"),
    (np.full((H, W), H * W), ValueError, "segments: more labels than pixels"),
    (np.arange(H * W).reshape(H, W) * 2, ValueError, "segments: more labels than pixels"),
    (np.zeros((H, W + 1), int), ValueError, rf"segments: .*\({H}, {W}\) or \({N}, {H}, {W}\).*\({H}, {W + 1}\)"),
    (np.zeros((N + 1, H, W), int), ValueError, "segments: .*shape"),
    (np.zeros((1, H, W), int), ValueError, "segments: .*shape"),
    (np.zeros((H, W), np.float32), TypeError, "segments: .*int labels.*float32"),
    (np.full((H, W), np.nan), ValueError, "segments: contains NaN"),
    (np.zeros((H, W), bool), TypeError, "segments: .*bool"),
    ("grid", TypeError, "segments: .*str"),
])
def test_bad_segment_maps_raise_clear_errors(x, segments, error, words):
    traces = []

    def f(v):
        traces.append(v.shape)
        return linear(v)

    with pytest.raises(error, match=words):
        feature_ablation(f, x, segments=segments)
    assert traces == [], "f was traced before the segments were checked"


def test_bad_x_fill_and_units_raise_clear_errors(x):
    segments = grid_segments(H, W, cells=2)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="x: contains NaN or infinite"):
        feature_ablation(linear, bad, segments=segments)
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        feature_ablation(linear, x.astype(np.int32), segments=segments)
    with pytest.raises(ValueError, match="fill.*NaN"):
        feature_ablation(linear, x, segments=segments, fill=np.nan)
    with pytest.raises(ValueError, match="units"):
        feature_ablation(linear, x, segments=segments, units=[5])
    with pytest.raises(ValueError, match="chunk_size"):
        feature_ablation(linear, x, segments=segments, chunk_size=0)
    with pytest.raises(TypeError, match="f: expected a callable"):
        feature_ablation(None, x, segments=segments)


def test_an_int_segments_is_a_grid_of_that_many_cells_per_side(x):
    got = feature_ablation(linear, x, segments=3)
    want = feature_ablation(linear, x, segments=grid_segments(H, W, cells=3))
    np.testing.assert_array_equal(got.segments, want.segments)
    np.testing.assert_array_equal(got.scores, want.scores)
    with pytest.raises(ValueError, match=r"^segments: a grid of expected 1 <= cells <= \(8, 9\)"):
        feature_ablation(linear, x, segments=H + 1)
