"""Tests for the analyses: features, metrics, units, masks, filters, embedding."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from jaxviz.analysis.embedding import knn_agreement, tsne
from jaxviz.analysis.filters import filter_grid
from jaxviz.analysis.masks import apply_mask, heatmap_mask, normalize
from jaxviz.analysis.metrics import (
    ClassificationReport,
    ConfusedPair,
    classification_report,
    confusion_matrix,
    most_confused_pairs,
)
from jaxviz.analysis.topk import top_k_images, unit_scores
from jaxviz.analysis.units import (
    SimilarUnits,
    UnitPair,
    per_unit,
    pick_units,
    similar_units,
    study_units,
    unit_selectivity,
)
from jaxviz.engine.activations import activation_maps, layer_features
from jaxviz.models.adapters import from_cnn
from jaxviz.models.cnn import forward

from numerics import assert_close

# --- features -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_net(tiny_model, tiny_variables):
    return from_cnn(tiny_model, tiny_variables)


def pixels(images):
    """The CNN's input, computed here: the notebook's ``X.astype("float32") / 255``."""
    return images.astype(np.float32) / 255


@pytest.mark.parametrize("layer", ["conv2", "pool2", "fc1", "logits"])
def test_layer_features_in_uneven_batches_equal_one_full_forward(tiny_model, tiny_variables, tiny_net, tiny_images,
                                                                 layer):
    want = np.asarray(jax.jit(lambda x: forward(tiny_model, tiny_variables, x, layer=layer))(pixels(tiny_images)))
    for batch_size in (3, 7, 100):  # 3 leaves a padded last batch of 1 real image
        got = layer_features(tiny_net, tiny_images, layer=layer, batch_size=batch_size)
        assert got.shape == want.shape and got.dtype == np.float32
        assert_close(got, want)


def test_layer_features_default_to_the_output_layer(tiny_model, tiny_variables, tiny_net, tiny_images):
    want = np.asarray(jax.jit(lambda x: forward(tiny_model, tiny_variables, x))(pixels(tiny_images)))
    got = layer_features(tiny_net, tiny_images, batch_size=4)
    assert got.shape == (7, 10) and tiny_net.output_layer == "logits"
    assert_close(got, want)


def test_layer_features_rejects_bad_input(tiny_model, tiny_variables, tiny_net, tiny_images):
    with pytest.raises(ValueError, match="nope"):
        layer_features(tiny_net, tiny_images, layer="nope")
    with pytest.raises(TypeError):
        layer_features(tiny_net, tiny_images.astype(np.float32), layer="fc1")
    with pytest.raises(ValueError):
        layer_features(tiny_net, tiny_images[:0], layer="fc1")
    with pytest.raises(ValueError, match="batch_size"):
        layer_features(tiny_net, tiny_images, layer="fc1", batch_size=0)
    with pytest.raises(TypeError, match="network: expected a jaxviz.Network"):
        layer_features(tiny_model, tiny_images, layer="fc1")  # the bare module is not a Network
    with pytest.raises(TypeError, match="network"):
        activation_maps(tiny_variables, tiny_images, layer="conv1")


def test_network_functions_are_cached_and_checked(tiny_net):
    assert tiny_net.layer_fn("fc1") is tiny_net.layer_fn("fc1")
    assert tiny_net.uint8_fn("fc1") is tiny_net.uint8_fn("fc1")
    assert tiny_net.score_fn("conv3") is tiny_net.score_fn("conv3")
    assert tiny_net.score_fn("fc1") is not tiny_net.score_fn("conv3")
    for make in (tiny_net.layer_fn, tiny_net.uint8_fn, tiny_net.score_fn):
        with pytest.raises(ValueError, match="conv7"):
            make("conv7")


@pytest.mark.parametrize("layer", ["conv1", "pool2", "fc1", "logits"])
def test_score_fn_is_unit_scores_of_the_layer(tiny_model, tiny_variables, tiny_net, tiny_images, layer):
    """``Network.score_fn`` is ``unit_scores``' default (spatial mean of conv maps) inside one program."""
    x = pixels(tiny_images)
    feats = np.asarray(forward(tiny_model, tiny_variables, x, layer=layer), np.float64)
    want = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats
    got = np.asarray(jax.jit(tiny_net.score_fn(layer))(tiny_variables, x))
    assert got.shape == (7, want.shape[1]) and got.dtype == np.float32
    assert_close(got, want)
    assert_close(unit_scores(layer_features(tiny_net, tiny_images, layer=layer)), want)


def test_activation_maps(tiny_net, tiny_images):
    maps = activation_maps(tiny_net, tiny_images[:2], layer="conv3")
    assert maps.shape == (2, 16, 16, 8)
    assert activation_maps(tiny_net, tiny_images[:2], layer="pool1").shape == (2, 16, 16, 4)
    with pytest.raises(ValueError, match="fc1.*Layers with maps: conv1, conv2, pool1, conv3, conv4, pool2"):
        activation_maps(tiny_net, tiny_images[:2], layer="fc1")
    with pytest.raises(ValueError, match="conv9"):
        activation_maps(tiny_net, tiny_images[:2], layer="conv9")


def test_unit_scores():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 4, 3, 6)).astype(np.float32)
    want_mean = np.array([[maps[n, :, :, c].sum() / 12 for c in range(6)] for n in range(5)])
    want_max = np.array([[max(maps[n, :, :, c].ravel()) for c in range(6)] for n in range(5)])
    assert_close(unit_scores(maps), want_mean)
    np.testing.assert_array_equal(unit_scores(maps, reduce="max"), want_max.astype(np.float32))
    dense = rng.normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_array_equal(unit_scores(dense), dense)
    with pytest.raises(ValueError, match="reduce"):
        unit_scores(maps, reduce="sum")
    tokens = rng.normal(size=(5, 7, 6)).astype(np.float32)  # (N, tokens, units): mean over the tokens
    assert_close(unit_scores(tokens), tokens.mean(1))
    with pytest.raises(ValueError, match="features"):
        unit_scores(dense[0])


def top_k_reference(scores: np.ndarray, k: int):
    """Naive: for each unit, sort (-score, index) pairs and keep the first k."""
    idx = np.empty((k, scores.shape[1]), np.int64)
    for u in range(scores.shape[1]):
        order = sorted(range(len(scores)), key=lambda i: (-scores[i, u], i))
        idx[:, u] = order[:k]
    return idx


@pytest.mark.parametrize("kind", ["distinct", "ties", "all_equal"])
def test_top_k_images_matches_stable_descending_sort(kind):
    rng = np.random.default_rng(1)
    if kind == "distinct":
        scores = rng.normal(size=(40, 6)).astype(np.float32)
    elif kind == "ties":
        scores = rng.integers(0, 3, size=(40, 6)).astype(np.float32)  # ~13 copies of each value
    else:
        scores = np.zeros((40, 6), np.float32)
    for k in (1, 5, 17, 40):
        top = top_k_images(scores, k)
        want = np.argsort(-scores, axis=0, kind="stable")[:k]
        assert top.indices.shape == (k, 6) and top.indices.dtype == np.int64
        np.testing.assert_array_equal(top.indices, want)
        np.testing.assert_array_equal(top.indices, top_k_reference(scores, k))
        np.testing.assert_array_equal(top.values, np.take_along_axis(scores, want, axis=0))
        assert top.values.dtype == np.float32


def test_top_k_images_negative_and_large_values():
    scores = np.array([[-5.0, 1e30], [-1.0, -1e30], [-3.0, 1e30], [-1.0, 0.0]], np.float32)
    top = top_k_images(scores, 3)
    np.testing.assert_array_equal(top.indices, [[1, 0], [3, 2], [2, 3]])


@pytest.mark.parametrize("k", [0, -1, 41, 2.0, "3"])
def test_top_k_images_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        top_k_images(np.zeros((40, 2), np.float32), k)


def test_top_k_images_rejects_bad_scores():
    with pytest.raises(ValueError, match="scores"):
        top_k_images(np.zeros(5, np.float32), 1)
    with pytest.raises(ValueError, match="scores"):
        top_k_images(np.zeros((0, 3), np.float32), 1)


# --- units -----------------------------------------------------------------------------

@pytest.fixture
def ten_class_labels():
    return np.repeat(np.arange(10), 10)  # 100 images, 10 per class


def test_unit_selectivity_synthetic(ten_class_labels):
    labels = ten_class_labels
    rng = np.random.default_rng(2)
    n = len(labels)
    scores = np.zeros((n, 3), np.float32)
    scores[:, 0] = np.where(labels == 2, 1.0, 0.0) + 0.01 * rng.random(n)  # fires only for class 2
    first_of_class = np.array([np.flatnonzero(labels == c)[0] for c in range(10)])
    scores[first_of_class, 1] = 5.0 + rng.random(10)  # its top 10: one image of every class
    scores[:, 2] = rng.random(n)  # top 10: five images of class 7, one of each of classes 0, 1, 3, 4, 5
    scores[np.flatnonzero(labels == 7)[:5], 2] += 10.0
    scores[first_of_class[[0, 1, 3, 4, 5]], 2] += 10.0
    top = top_k_images(scores, 10)
    sel = unit_selectivity(top.indices, labels, 10)

    assert sel.histogram.shape == (3, 10) and sel.histogram.dtype == np.int64
    np.testing.assert_array_equal(sel.histogram.sum(1), [10, 10, 10])
    np.testing.assert_array_equal(sel.histogram[0], np.eye(10, dtype=np.int64)[2] * 10)
    assert sel.majority_class[0] == 2 and sel.score[0] == 1.0 and sel.entropy[0] == 0.0
    np.testing.assert_array_equal(sel.histogram[1], np.ones(10))
    assert sel.score[1] == pytest.approx(0.1) and sel.entropy[1] == pytest.approx(1.0)
    assert sel.majority_class[1] == 0  # ties go to the lowest class
    np.testing.assert_array_equal(sel.histogram[2], [1, 1, 0, 1, 1, 1, 0, 5, 0, 0])
    assert sel.majority_class[2] == 7 and sel.score[2] == 0.5
    assert sel.entropy[2] == pytest.approx(-(0.5 * np.log(0.5) + 5 * 0.1 * np.log(0.1)) / np.log(10))
    np.testing.assert_array_equal(sel.ranking(), [0, 2, 1])


def test_class_selectivity_index_is_morcos_formula_in_a_numpy_loop(ten_class_labels):
    from jaxviz.analysis.units import class_selectivity

    labels = ten_class_labels
    rng = np.random.default_rng(4)
    scores = rng.random((len(labels), 5))
    scores[:, 1] = np.where(labels == 3, 2.0, 0.0)  # only class 3: index 1
    scores[:, 2] = 0.7  # every class alike: index 0
    scores[:, 3] = 0.0  # dead: NaN
    got = class_selectivity(scores, labels, 10)
    for u in range(5):
        means = np.array([scores[labels == c, u].mean() for c in range(10)])
        best = int(np.argmax(means))
        rest = np.mean([m for c, m in enumerate(means) if c != best])
        want = (means[best] - rest) / (means[best] + rest) if means[best] + rest else np.nan
        np.testing.assert_allclose(got.class_means[:, u], means, rtol=1e-12)
        assert got.preferred_class[u] == best
        np.testing.assert_allclose(got.index[u], want, rtol=1e-12)
    assert got.index[1] == 1.0 and got.index[2] == 0.0 and np.isnan(got.index[3])
    fewer = class_selectivity(scores, labels, 11)  # class 10 has no image: left out of the index
    assert np.isnan(fewer.class_means[10]).all() and np.allclose(fewer.index[:3], got.index[:3], rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        class_selectivity(scores, np.zeros_like(labels), 10)  # one class: no selectivity
    ranked = got.ranking()  # the index descending, ties by the preferred class's mean, never-active units last
    assert ranked[0] == 1 and ranked[-1] == 3
    tied = class_selectivity(np.stack([np.where(labels == 2, 1.0, 0.0), np.where(labels == 5, 3.0, 0.0)], 1), labels,
                             10)
    assert tied.index.tolist() == [1.0, 1.0] and tied.ranking().tolist() == [1, 0]


def test_unit_selectivity_rejects_bad_input(ten_class_labels):
    with pytest.raises(ValueError, match="top_indices"):
        unit_selectivity(np.zeros(3, np.int64), ten_class_labels, 10)
    with pytest.raises(ValueError, match="num_classes"):
        unit_selectivity(np.zeros((3, 2), np.int64), ten_class_labels, 1)
    with pytest.raises(ValueError, match="100"):
        unit_selectivity(np.full((3, 2), 100), ten_class_labels, 10)


def test_similar_units_finds_duplicates():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 6))
    scores[:, 4] = scores[:, 1]  # an exact duplicate
    scores[:, 5] = 3.0  # a dead unit
    top = top_k_images(scores.astype(np.float32), 8)
    pairs = similar_units(top.indices, scores, top=15)
    assert isinstance(pairs, SimilarUnits)
    assert len(pairs.overlap) == len(pairs.correlated) == 15  # all 6*5/2 pairs
    assert all(isinstance(p, UnitPair) for p in pairs.overlap + pairs.correlated)
    assert {(p.a, p.b) for p in pairs.overlap} == {(p.a, p.b) for p in pairs.correlated} == \
           set(itertools.combinations(range(6), 2))
    best_overlap, best_corr = pairs.overlap[0], pairs.correlated[0]
    assert (best_overlap.a, best_overlap.b) == (1, 4) and best_overlap.jaccard == 1.0
    assert (best_corr.a, best_corr.b) == (1, 4) and best_corr.correlation == pytest.approx(1.0)
    # every pair against a naive computation
    for pair in pairs.overlap:
        a, b = set(top.indices[:, pair.a]), set(top.indices[:, pair.b])
        if 5 in (pair.a, pair.b):  # a dead unit's top-K "set" is only the tie order
            assert pair.correlation == 0.0 and pair.jaccard == 0.0
        else:
            assert pair.jaccard == pytest.approx(len(a & b) / len(a | b))
            assert pair.correlation == pytest.approx(np.corrcoef(scores[:, pair.a], scores[:, pair.b])[0, 1])
    for first, second in itertools.pairwise(pairs.correlated):
        assert first.correlation >= second.correlation
    for first, second in itertools.pairwise(pairs.overlap):
        assert first.jaccard >= second.jaccard


def test_similar_pairs_list_each_unordered_pair_once():
    # units 0 and 1 identical, 2 a noisy copy of them, 3 independent: (0, 1) heads both the overlap and the
    # correlation list, so the two lists side by side (the report's old table) showed it twice
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 4))
    scores[:, 1] = scores[:, 0]
    scores[:, 2] = scores[:, 0] + 0.5 * rng.normal(size=40)
    top = top_k_images(scores.astype(np.float32), 6)
    similar = similar_units(top.indices, scores, top=2)
    both = [(p.a, p.b) for p in similar.overlap + similar.correlated]
    assert both[0] == both[2] == (0, 1)  # what the old table listed twice
    keys = [frozenset((p.a, p.b)) for p in similar.pairs]
    assert len(keys) == len(set(keys))
    assert set(keys) == {frozenset(k) for k in both}
    assert similar.pairs[:len(similar.overlap)] == similar.overlap  # overlap first, then the rest


def test_similar_pairs_drop_a_reversed_duplicate():
    pair = UnitPair(3, 356, 0.5, 0.9)
    similar = SimilarUnits([pair, UnitPair(1, 2, 0.4, 0.1)], [UnitPair(356, 3, 0.5, 0.9), UnitPair(2, 7, 0.0, 0.8)])
    assert [(p.a, p.b) for p in similar.pairs] == [(3, 356), (1, 2), (2, 7)]


def test_dead_units_do_not_overlap():
    rng = np.random.default_rng(4)
    scores = np.zeros((30, 5), np.float32)
    scores[:, :2] = rng.normal(size=(30, 2))  # units 2, 3, 4 never fire: identical tie-order top-K sets
    top = top_k_images(scores, 5)
    pairs = similar_units(top.indices, scores, top=3)
    assert all(2 not in (p.a, p.b) or p.jaccard == 0.0 for p in pairs.overlap)
    assert pairs.overlap[0].jaccard < 1.0


def test_similar_units_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="scores"):
        similar_units(np.zeros((3, 4), np.int64), np.zeros((10, 5)))


def test_pick_units_prefers_distinct_classes(ten_class_labels):
    # units 0, 1 both select class 3 fully; unit 2 selects class 5 fully; unit 3 is mixed
    idx3, idx5 = np.flatnonzero(ten_class_labels == 3), np.flatnonzero(ten_class_labels == 5)
    top = np.stack([idx3, idx3[::-1], idx5, np.arange(0, 100, 10)], axis=1)
    sel = unit_selectivity(top, ten_class_labels, 10)
    assert pick_units(sel, 2) == [0, 2]
    # the mixed unit 3 (majority class 0, by the tie rule) is a new class, so it comes before unit 1
    assert pick_units(sel, 3) == [0, 2, 3]
    assert pick_units(sel, 4) == [0, 2, 3, 1]
    assert pick_units(sel, 2, alive=np.array([False, True, True, True])) == [1, 2]


# --- metrics ----------------------------------------------------------------------------

# Hand-worked example, classes a, b, c:
#   true a: predicted a, b        -> row [1, 1, 0]
#   true b: predicted b, b        -> row [0, 2, 0]
#   true c: predicted a, c, b, b  -> row [1, 2, 1]
LABELS = np.array([0, 0, 1, 1, 2, 2, 2, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 0, 2, 1, 1])
CM = [[1, 1, 0], [0, 2, 0], [1, 2, 1]]
NAMES = ("a", "b", "c")


def test_confusion_matrix_hand_example():
    cm = confusion_matrix(LABELS, PREDICTIONS, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)
    np.testing.assert_array_equal(confusion_matrix(LABELS, PREDICTIONS, 4)[:3, :3], CM)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(LABELS, PREDICTIONS[:-1], 3)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(LABELS + 1, PREDICTIONS, 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(LABELS, PREDICTIONS - 1, 3)


def test_most_confused_pairs_hand_example():
    pairs = most_confused_pairs(np.array(CM), NAMES)
    # b<->c: 0 + 2 = 2 of 2 + 4 images; a<->b: 1 + 0 of 2 + 2; a<->c: 0 + 1 of 2 + 4
    assert pairs == [
        ConfusedPair(a="b", b="c", count=2, a_as_b=0, b_as_a=2, rate=2 / 6),
        ConfusedPair(a="a", b="b", count=1, a_as_b=1, b_as_a=0, rate=1 / 4),
        ConfusedPair(a="a", b="c", count=1, a_as_b=0, b_as_a=1, rate=1 / 6),
    ]
    assert all(type(p.count) is int and type(p.a_as_b) is int and type(p.rate) is float for p in pairs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pairs[0].count = 3
    assert most_confused_pairs(np.array(CM), NAMES, top=1) == pairs[:1]
    assert most_confused_pairs(np.eye(3, dtype=np.int64) * 5, NAMES) == []
    with pytest.raises(ValueError, match="top"):
        most_confused_pairs(np.array(CM), NAMES, top=0)


def test_classification_report_hand_example():
    logits = np.eye(3)[PREDICTIONS] * 2.0 - 1.0
    report = classification_report(LABELS, logits, NAMES)
    assert isinstance(report, ClassificationReport)
    assert report.images == 8 and type(report.images) is int
    assert report.accuracy == 0.5 and type(report.accuracy) is float  # 1 + 2 + 1 of 8
    assert report.per_class_accuracy == {"a": 0.5, "b": 1.0, "c": 0.25}
    assert report.easiest == ("b", "a", "c") and report.hardest == ("c", "a", "b")
    assert report.confusion_matrix.dtype == np.int64
    np.testing.assert_array_equal(report.confusion_matrix, CM)
    assert report.most_confused == most_confused_pairs(np.array(CM), NAMES)
    assert report.class_names == NAMES
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.accuracy = 1.0
    with pytest.raises(ValueError, match="logits"):
        classification_report(LABELS, logits[:, :2], NAMES)


def test_classification_report_of_a_network(tiny_net, tiny_dataset):
    """The report of a network's output layer on labelled images, against numpy on the same logits."""
    names = tuple(f"class {i}" for i in range(10))
    logits = layer_features(tiny_net, tiny_dataset.images)
    report = classification_report(tiny_dataset.labels, logits, names)
    predictions = logits.argmax(1)
    assert report.images == 12
    assert report.accuracy == pytest.approx(np.mean(predictions == tiny_dataset.labels))
    want = np.zeros((10, 10), np.int64)
    for label, prediction in zip(tiny_dataset.labels, predictions):
        want[label, prediction] += 1
    np.testing.assert_array_equal(report.confusion_matrix, want)
    for c, name in enumerate(names):
        if want[c].sum():
            assert report.per_class_accuracy[name] == want[c, c] / want[c].sum()
        else:  # no images of the class: no accuracy, and never among the easiest or hardest
            assert np.isnan(report.per_class_accuracy[name])
            assert name not in report.easiest + report.hardest


# --- masks ------------------------------------------------------------------------------

def test_normalize():
    np.testing.assert_allclose(normalize(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(normalize(np.full((2, 2), 7.0)), np.zeros((2, 2)))


def test_heatmap_mask_shape_and_values():
    heatmap = np.random.default_rng(4).random((7, 5))
    for low in (0.3, 0.0):
        mask = heatmap_mask(heatmap, (32, 24), low=low)
        assert mask.shape == (32, 24) and mask.dtype == np.float32
        assert set(np.unique(mask).tolist()) <= {np.float32(low), 1.0}


def test_heatmap_mask_hot_corner():
    """A 2x2 heatmap hot at the top-left corner: after the linear resize the
    value at pixel (y, x) is (1 - y/31)(1 - x/31), and Gaussian smoothing
    leaves such a function unchanged away from the borders."""
    mask = heatmap_mask(np.array([[1.0, 0.0], [0.0, 0.0]]), (32, 32), low=0.3)
    y, x = np.mgrid[0:32, 0:32]
    ramp = (1 - y / 31) * (1 - x / 31)
    assert mask[0, 0] == 1.0 and mask[31, 31] == np.float32(0.3) and mask[0, 31] == np.float32(0.3)
    assert np.all(mask[ramp > 0.6] == 1.0)
    assert np.all(mask[ramp < 0.4] == np.float32(0.3))
    kept = np.argwhere(mask == 1.0)
    assert kept[:, 0].max() < 16 and kept[:, 1].max() < 16  # the kept region is in the top-left quadrant
    # mirrored heatmap -> mirrored mask
    np.testing.assert_array_equal(heatmap_mask(np.array([[0.0, 0.0], [0.0, 1.0]]), (32, 32)), mask[::-1, ::-1])


def test_heatmap_mask_threshold_and_constant_heatmap():
    heatmap = np.random.default_rng(5).random((4, 4))
    loose = heatmap_mask(heatmap, (16, 16), threshold=0.0)
    strict = heatmap_mask(heatmap, (16, 16), threshold=1.01)
    assert np.all(loose == 1.0) and np.all(strict == np.float32(0.3))
    np.testing.assert_array_equal(heatmap_mask(np.ones((3, 3)), (8, 8)), np.full((8, 8), 0.3, np.float32))


def test_heatmap_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="heatmap"):
        heatmap_mask(np.zeros(4), (8, 8))
    with pytest.raises(ValueError, match="low"):
        heatmap_mask(np.zeros((2, 2)), (8, 8), low=1.5)


def test_apply_mask_uint8_and_float():
    image = np.array([[[200, 201, 255], [10, 0, 255]]], np.uint8)  # (1, 2, 3)
    mask = np.array([[0.3, 0.5]], np.float32)
    out = apply_mask(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    # 200*.3=60, 201*.3=60.3->60, 255*.3=76.5->76 or 77 (float32 rounding); 10*.5=5, 0, 255*.5=127.5->128
    np.testing.assert_array_equal(out[0, 1], [5, 0, 128])
    np.testing.assert_array_equal(out[0, 0, :2], [60, 60])
    assert out[0, 0, 2] in (76, 77)
    np.testing.assert_array_equal(apply_mask(image, np.ones((1, 2))), image)
    float_image = image.astype(np.float32) / 255
    got = apply_mask(float_image, mask)
    assert got.dtype == np.float32
    assert_close(got, float_image * mask[..., None])
    with pytest.raises(ValueError, match="mask"):
        apply_mask(image, np.ones((2, 1)))


# --- filters -------------------------------------------------------------------------------

def test_filter_grid_rgb_32_kernels():
    kernels = np.random.default_rng(6).normal(size=(3, 3, 3, 32)).astype(np.float32)
    cells, filled = filter_grid(kernels)
    assert cells.shape == (6, 6, 3, 3, 3) and cells.dtype == np.float32
    assert filled.shape == (6, 6) and filled.dtype == bool
    assert filled.sum() == 32
    np.testing.assert_array_equal(filled.ravel(), np.arange(36) < 32)  # row-major, blanks last
    flat = cells.reshape(36, 3, 3, 3)
    assert np.all(flat[32:] == 1.0)  # the 4 blank cells are white
    for p in range(32):
        k = kernels[..., p]
        assert_close(flat[p], (k - k.min()) / (k.max() - k.min()))
        assert flat[p].min() == 0.0 and flat[p].max() == pytest.approx(1.0)


def test_filter_grid_gray_for_other_input_channels():
    kernels = np.random.default_rng(7).normal(size=(3, 3, 8, 10)).astype(np.float32)
    cells, filled = filter_grid(kernels)
    assert cells.shape == (4, 4, 3, 3, 3) and filled.sum() == 10
    flat = cells.reshape(16, 3, 3, 3)
    for p in range(10):
        mean = kernels[..., p].mean(-1)
        want = (mean - mean.min()) / (mean.max() - mean.min())
        for c in range(3):  # gray: the same in every channel
            assert_close(flat[p, ..., c], want)
    assert np.all(flat[10:] == 1.0)


def test_filter_grid_perfect_square_and_bad_shape():
    cells, filled = filter_grid(np.ones((3, 3, 3, 16), np.float32))
    assert cells.shape[:2] == (4, 4) and filled.all()
    assert np.all(cells == 0.0)  # constant kernels normalize to zeros
    with pytest.raises(ValueError, match="kernels"):
        filter_grid(np.ones((3, 3, 16)))


# --- embedding ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(8)
    centers = np.zeros((3, 10))
    centers[0, 0], centers[1, 1], centers[2, 2] = 30.0, 30.0, 30.0
    labels = np.repeat(np.arange(3), 20)
    return centers[labels] + rng.normal(size=(60, 10)), labels


def test_tsne_separates_blobs(blobs):
    features, labels = blobs
    # max_iter=300, not the minimum 250: scikit-learn's first 250 iterations are all
    # early exaggeration, so max_iter=250 returns a still-exaggerated layout (with this
    # data: agreement 0.9 for one class); 50 normal iterations separate the blobs cleanly.
    emb = tsne(features.reshape(60, 2, 5), perplexity=10, max_iter=300)  # (N, ...) is flattened
    assert emb.coords.shape == (60, 2) and emb.coords.dtype == np.float32
    np.testing.assert_array_equal(emb.indices, np.arange(60))
    assert emb.settings["points"] == 60 and emb.settings["perplexity"] == 10 and emb.seconds >= 0
    agreement = knn_agreement(emb.coords, labels[emb.indices], 3, k=5)
    assert agreement.shape == (3,)
    assert np.all(agreement >= 0.95), agreement


def test_tsne_subsample(blobs):
    features, labels = blobs
    emb = tsne(features, perplexity=5, max_iter=250, subsample=30, seed=1)
    assert emb.coords.shape == (30, 2) and emb.indices.shape == (30,)
    assert np.all(np.diff(emb.indices) > 0) and emb.indices.max() < 60
    again = tsne(features, perplexity=5, max_iter=250, subsample=30, seed=1)
    np.testing.assert_array_equal(again.indices, emb.indices)


def test_tsne_rejects_bad_settings(blobs):
    features, _ = blobs
    with pytest.raises(ValueError, match="perplexity"):
        tsne(features, perplexity=60, max_iter=250)
    with pytest.raises(ValueError, match="perplexity"):
        tsne(features, perplexity=20, max_iter=250, subsample=20)
    with pytest.raises(ValueError, match="max_iter"):
        tsne(features, perplexity=10, max_iter=100)
    with pytest.raises(ValueError, match="features"):
        tsne(features[:1])


def test_knn_agreement_hand_example():
    # two tight pairs far apart, plus one class-1 point inside class 0's cluster
    coords = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.1], [10.0, 0.0], [10.1, 0.0]])
    labels = np.array([0, 0, 1, 1, 1])
    # k=1 nearest neighbours: 0->1, 1->0 (same class); 2->0 or 1 (other class); 3->4, 4->3 (same)
    np.testing.assert_allclose(knn_agreement(coords, labels, 3, k=1)[:2], [1.0, 2 / 3])
    # k=2: 0->{1,2}, 1->{0,2}: 1/2 each; 2->{0,1}: 0; 3->{4,1}, 4->{3,1}: 1/2 each (1 is the nearest far point)
    agreement = knn_agreement(coords, labels, 3, k=2)
    np.testing.assert_allclose(agreement[:2], [0.5, 1 / 3])
    assert np.isnan(agreement[2])  # a class with no points
    with pytest.raises(ValueError, match="k"):
        knn_agreement(coords, labels, 3, k=5)
    with pytest.raises(ValueError, match="labels"):
        knn_agreement(coords, labels[:4], 3)


def test_selectivity_counts_only_active_top_k_images():
    labels = np.repeat(np.arange(4), 5)  # 20 images, 4 classes
    scores = np.zeros((20, 3), np.float32)
    scores[[10, 11], 0] = [2.0, 1.0]  # unit 0: active on two class-2 images only
    scores[:, 1] = np.arange(20)  # unit 1: active everywhere, top 5 are class 3 (indices 15..19)
    top = top_k_images(scores, 5)  # unit 2 is dead: its top 5 are indices 0..4 by tie order
    sel = unit_selectivity(top.indices, labels, 4, scores=scores)
    assert sel.histogram[0].tolist() == [0, 0, 2, 0] and sel.score[0] == pytest.approx(0.4)
    assert sel.score[1] == 1.0 and sel.majority_class[1] == 3
    assert sel.histogram[2].sum() == 0 and sel.score[2] == 0.0
    plain = unit_selectivity(top.indices, labels, 4)  # without scores every slot counts
    assert plain.score[2] == 1.0 and plain.majority_class[2] == 0


@pytest.mark.parametrize("count, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_pick_units_refuses_non_positive_counts(count, error):
    sel = unit_selectivity(np.array([[0, 1, 2], [1, 2, 0]]), np.array([0, 1, 0]), 2)
    with pytest.raises(error, match="count: expected a positive int"):
        pick_units(sel, count)
    assert pick_units(sel, 1) == [int(sel.ranking()[0])]


def test_similar_units_refuses_non_positive_top():
    with pytest.raises(ValueError, match="top: expected a positive int"):
        similar_units(np.array([[0, 1], [1, 0]]), np.ones((2, 2)), top=0)


def test_layer_features_refuses_floats_and_other_sizes(tiny_net, tiny_images):
    with pytest.raises(TypeError, match="images.*uint8.*model input already"):
        layer_features(tiny_net, tiny_net.to_input(tiny_images), layer="fc1")
    with pytest.raises(TypeError, match="images.*uint8"):
        layer_features(tiny_net, jax.numpy.asarray(tiny_images, jax.numpy.float32), layer="fc1")
    big = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"images: the network takes 32x32 .* got 64x64 images with 3 channels"):
        layer_features(tiny_net, big, layer="fc1")
    with pytest.raises(ValueError, match=r"with 3 channels .* got 32x32 images with 1 channels"):
        layer_features(tiny_net, np.zeros((2, 32, 32, 1), np.uint8), layer="fc1")


def test_study_units_is_the_pipeline_in_one_call():
    rng = np.random.default_rng(3)
    scores = np.maximum(rng.normal(size=(40, 12)), 0).astype(np.float32)
    scores[:, 5] = 0.0  # a dead unit
    labels = rng.integers(0, 4, size=40)
    study = study_units(scores, labels, 4, k=5, count=3)
    top = top_k_images(scores, 5)
    sel = unit_selectivity(top.indices, labels, 4, scores=scores)
    np.testing.assert_array_equal(study.top.indices, top.indices)
    np.testing.assert_array_equal(study.selectivity.score, sel.score)
    assert study.units == tuple(pick_units(sel, 3, alive=scores.max(0) > 0)) and 5 not in study.units
    assert not study.alive[5] and study.alive.sum() == 11
    flat = study.shown_indices()
    assert flat.shape == (15,) and list(flat[:5]) == list(top.indices[:, study.units[0]])
    grouped = per_unit(flat, 3)
    np.testing.assert_array_equal(grouped, top.indices[:, list(study.units)])
    assert study_units(scores, labels, 4, k=5, units=[7, 2]).units == (7, 2)
    with pytest.raises(ValueError, match="units"):
        study_units(scores, labels, 4, k=5, units=[12])
    with pytest.raises(ValueError, match="count"):
        study_units(scores, labels, 4, k=5, count=0)
