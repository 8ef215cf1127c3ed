"""Is a class's prediction sensitive to a human concept? Testing with concept activation vectors (TCAV).

TCAV (Kim et al., ICML 2018) asks whether the logit of a class rises when a
layer's activations move toward a concept (stripes, a colour, a texture):

1. A concept activation vector (CAV) at a layer is the normal of a linear
   classifier separating the activations of the concept's images from those
   of a random set of images. ``cav="logistic"``: L2-regularised logistic
   regression (scikit-learn's ``LogisticRegression()`` objective, C = 1),
   fitted by L-BFGS (optax) on the device in the span of the 2m examples
   (where the optimum lies), so a fit costs one (2m, 2m) Gram matrix whatever
   the layer's width; ``cav="mean_difference"``: the
   difference of the two sets' mean activations (FastCAV, Schmalwasser et al.
   2025), no fitting at all.
2. The directional derivative of class k's logit along the CAV, for an image
   x of class k, is ∇ₕ logitₖ · v with the gradient taken with respect to the
   layer's activations h (``Network.perturbed_fn``: a perturbation added at
   the layer). The TCAV score is the share of the class's images for which it
   is positive.
3. A score alone means nothing: a CAV of random images also gets one. Each
   concept is fitted against ``runs`` random sets, and ``runs`` CAVs of one
   random set against another give the null distribution; a two-sided t-test
   of the concept's scores against the null's, with a Bonferroni correction
   over every (concept, class, layer) tested, decides. An insignificant result
   has no score (NaN): it is reported as insignificant.

Every CAV of a layer (concepts x runs, and the null runs) is fitted by one
compiled program (``jax.lax.map`` over a bounded chunk of ``vmap``-ped fits),
and one backward pass per image and layer gives the gradient that every CAV is
dotted with, so the cost of more runs is a matrix product, not more passes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz._batching import batch_sharding, round_up, to_host
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_choice, check_int, check_real, check_seed
from jaxviz.data.concepts import load_concept_folder, procedural_concepts
from jaxviz.data.images import Dataset
from jaxviz.engine.activations import layer_features
from jaxviz.models.network import Network

__all__ = ["CAV_METHODS", "TCAV", "TCAV_CONCEPTS", "cav_program", "fit_cav", "significance", "tcav"]

CAV_METHODS = ("logistic", "mean_difference")
TCAV_CONCEPTS = ("stripes-horizontal", "stripes-vertical", "dots", "checkerboard", "red")  # the built-in default
TCAV_RUNS = 50
LOGISTIC_C = 1.0  # scikit-learn's LogisticRegression default: the direction a scikit-learn user expects
LOGISTIC_STEPS = 100  # L-BFGS iterations; 50 reach scikit-learn's direction (cosine 1 - 1e-7) on CIFAR CNN layers
MIN_SET = 4  # images per concept or random set: fewer cannot be told from noise
FIT_BYTES = 256 << 20  # bound on the activations gathered at once for the CAV fits of one chunk


@dataclasses.dataclass(frozen=True)
class TCAV:
    """TCAV scores with their significance, per (concept, target class, layer).

    Attributes:
      concepts: the C concepts.
      targets: the T target classes (names).
      layers: the L layers.
      scores: float64 (C, T, L): the mean TCAV score over the runs where the test is significant; NaN where not
        (an insignificant score is no result).
      significant: bool (C, T, L): the concept's scores differ from the random CAVs' (two-sided t-test,
        p < alpha / (C T L)).
      p_values: float64 (C, T, L): the t-test's p-values, uncorrected.
      run_scores: float64 (C, T, L, R): the score of each run's CAV (the evidence; not a result on its own).
      random_scores: float64 (T, L, R): the scores of the random-vs-random CAVs (the null distribution).
      cav_accuracy: float64 (C, L, R): each concept CAV's accuracy on the images it was fitted to.
      images_per_target: int64 (T,): the images each class's scores are shares of.
      runs: R; set_size: images per concept and random set; cav: how CAVs are found; alpha: the test's level.
    """

    concepts: tuple[str, ...]
    targets: tuple[str, ...]
    layers: tuple[str, ...]
    scores: np.ndarray
    significant: np.ndarray
    p_values: np.ndarray
    run_scores: np.ndarray
    random_scores: np.ndarray
    cav_accuracy: np.ndarray
    images_per_target: np.ndarray
    runs: int
    set_size: int
    cav: str
    alpha: float

    def table(self) -> str:
        """Fixed-width text: one row per (concept, class), one column per layer; "n.s." where not significant."""
        first = max(len(f"{c} -> {t}") for c in self.concepts for t in self.targets)
        width = max(6, *(len(layer) for layer in self.layers))
        lines = [" " * first + "  " + "  ".join(layer.rjust(width) for layer in self.layers)]
        for i, concept in enumerate(self.concepts):
            for j, target in enumerate(self.targets):
                cells = ["n.s." if not self.significant[i, j, k] else f"{self.scores[i, j, k]:.2f}"
                         for k in range(len(self.layers))]
                lines.append(f"{concept} -> {target}".ljust(first) + "  " + "  ".join(c.rjust(width) for c in cells))
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The result as JSON values (an insignificant score as null)."""
        return {"concepts": list(self.concepts), "targets": list(self.targets), "layers": list(self.layers),
                "scores": [[[float(v) if ok else None for v, ok in zip(row, oks)] for row, oks in zip(a, b)]
                           for a, b in zip(self.scores, self.significant)],
                "significant": self.significant.tolist(), "p_values": self.p_values.tolist(),
                "runs": self.runs, "set_size": self.set_size, "cav": self.cav, "alpha": self.alpha,
                "images_per_target": self.images_per_target.tolist()}


def fit_cav(positive: jax.Array, negative: jax.Array, *, method: str = "logistic",
            steps: int = LOGISTIC_STEPS) -> tuple[jax.Array, jax.Array]:
    """One CAV: the unit direction (D,) from ``negative`` (m, D) activations toward ``positive`` (m, D), and the
    accuracy of its classifier on them (a scalar)."""
    x = jnp.concatenate([positive, negative]).astype(jnp.float32)
    y = jnp.concatenate([jnp.ones(positive.shape[0]), -jnp.ones(negative.shape[0])])
    if method == "mean_difference":
        middle = (positive.mean(0) + negative.mean(0)) / 2
        w = positive.mean(0) - negative.mean(0)
        b = -middle @ w
    else:
        import optax

        # The optimum w lies in the span of the 2m rows (representer theorem): fit in an orthonormal basis of it,
        # (2m, 2m) coordinates from the Gram matrix's eigenvectors, then map back; the same objective and
        # conditioning as on (2m, D), at the cost of one Gram matrix.
        eigenvalues, vectors = jnp.linalg.eigh(jnp.einsum("id,jd->ij", x, x, precision="highest"))
        keep = eigenvalues > eigenvalues[-1] * 1e-6  # directions float32 cannot resolve carry no data
        root = jnp.sqrt(jnp.where(keep, eigenvalues, 1.0))
        coordinates = vectors * jnp.where(keep, root, 0.0)

        def loss(p):  # scikit-learn's objective, C Σ log(1 + exp(-y z)) + ||w||² / 2, divided by C n
            w, b = p
            return jnp.mean(jax.nn.softplus(-y * (coordinates @ w + b))) + w @ w / (2 * LOGISTIC_C * x.shape[0])

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
            return (optax.apply_updates(p, updates), state), None

        p = (jnp.zeros(x.shape[0], jnp.float32), jnp.zeros((), jnp.float32))
        ((w_span, b), _), _ = jax.lax.scan(step, (p, solver.init(p)), None, length=steps)
        w = jnp.einsum("id,i->d", x, vectors @ jnp.where(keep, w_span / root, 0.0), precision="highest")
    accuracy = jnp.mean((x @ w + b > 0) == (y > 0))
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30), accuracy


@functools.lru_cache(maxsize=32)
def cav_program(method: str, steps: int, chunk: int) -> Callable:
    """Jitted ``(features (P, D), positive (R, m) int32, negative (R, m) int32) -> (cavs (R, D), accuracy (R,))``:
    R CAVs, each fitted on the feature rows its index arrays name, ``chunk`` of them vmapped at a time."""

    def one(features, pair):
        return fit_cav(features[pair[0]], features[pair[1]], method=method, steps=steps)

    def fit_all(features, positive, negative):
        return jax.lax.map(functools.partial(one, features), (positive, negative), batch_size=chunk)

    return jax.jit(fit_all)


@functools.lru_cache(maxsize=32)
def _derivative_program(fn: Callable, layer_fn: Callable, to_input: Callable, sharding: Any) -> Callable:
    """Jitted ``(params, images uint8 (B, ...), targets (B,), cavs (R, D)) -> bool (B, R)``: whether the directional
    derivative of each image's target logit along each CAV, at ``fn``'s layer, is positive."""

    def positive(params, images, targets, cavs):
        x = to_input(images)
        like = jax.eval_shape(layer_fn, params, x)
        delta = jnp.zeros(like.shape, like.dtype)

        def target_logits(delta):
            _, logits = fn(params, x, delta)
            return jnp.take_along_axis(logits, targets[:, None], 1).sum()  # each image's logit: its own delta only

        gradient = jax.grad(target_logits)(delta).reshape(x.shape[0], -1).astype(jnp.float32)
        return jnp.einsum("bd,rd->br", gradient, cavs, precision="highest") > 0

    return jax.jit(positive, out_shardings=sharding)


def significance(concept_scores: np.ndarray, random_scores: np.ndarray) -> np.ndarray:
    """Two-sided p-values of Student's t-test (equal variances, as Kim et al.) of ``concept_scores`` (..., R)
    against ``random_scores`` (..., R'), over the last axis; 1 where both are constant and equal."""
    import warnings

    from scipy import stats

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's "nearly identical" warning: such data give p = 1
        p = stats.ttest_ind(concept_scores, random_scores, axis=-1).pvalue
    return np.where(np.isnan(p), 1.0, p)


def _check_images(network: Network, images: Any, name: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ArgumentTypeError(name, f"expected a uint8 numpy array (N, H, W, C), got {type(images).__name__}")
    network.input_spec.check_images(images, name)
    return images


def _concepts(network: Network, concepts: Any, count: int, seed: int) -> dict[str, np.ndarray]:
    height, width, channels = network.input_spec.shape
    if concepts is None:
        return procedural_concepts(height, width, channels, count=count, names=TCAV_CONCEPTS, seed=seed)
    if not isinstance(concepts, Mapping) or not concepts:
        raise ArgumentTypeError("concepts", f"expected a non-empty mapping of name -> images or folder, got "
                                            f"{type(concepts).__name__ if concepts is not None else None}")
    out = {}
    for name, value in concepts.items():
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError("concepts", f"expected concept names as non-empty strings, got {name!r}")
        if isinstance(value, (str, os.PathLike)):
            value = load_concept_folder(value, name=f"concepts[{name!r}]")
        out[name] = _check_images(network, value, f"concepts[{name!r}]")
        if len(out[name]) < MIN_SET:
            raise ArgumentError(f"concepts[{name!r}]", f"expected at least {MIN_SET} images to fit a CAV to, "
                                                       f"got {len(out[name])}")
    return out


def _targets(network: Network, targets: Any) -> tuple[int, ...]:
    if not network.is_classifier:
        raise ArgumentError("network", "expected a classifier (class_names) for TCAV's target classes")
    names = network.class_names
    if isinstance(targets, (str, int, np.integer)):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets:
        raise ArgumentTypeError("targets", f"expected class names or indices, got {targets!r}")
    out = []
    for t in targets:
        if isinstance(t, str) and t in names:
            out.append(names.index(t))
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= t < len(names):
            out.append(int(t))
        else:
            raise ArgumentError("targets", f"expected classes from {', '.join(names)} (or 0..{len(names) - 1}), got {t!r}")
    if len(set(out)) != len(out):
        raise ArgumentError("targets", f"expected distinct classes, got {list(targets)}")
    return tuple(out)


def tcav(network: Network, concepts: Mapping[str, Any] | None, targets: Sequence[str | int], layers: Sequence[str],
         *, images: Dataset | np.ndarray, labels: Any = None, random_images: np.ndarray | None = None,
         runs: int = TCAV_RUNS, cav: str = "logistic", alpha: float = 0.05, concept_images: int = 50,
         batch_size: int = 128, seed: int = 0, progress: bool = False) -> TCAV:
    """TCAV scores of concepts for target classes at layers, with the significance test of Kim et al.

    Args:
      network: a classifier with ``apply_perturbed`` (every adapter provides it).
      concepts: name -> uint8 images (n, H, W, C) of the network's input size, or a folder of them; None: the
        built-in procedural concepts ``TCAV_CONCEPTS`` (``concept_images`` each).
      targets: the classes (names or indices) whose logits are differentiated.
      layers: the layers the CAVs live in (before the output layer).
      images: the images scored: a ``Dataset`` (each class's own images; its classes matched to the network's by
        name), or uint8 (N, H, W, C) with ``labels`` (without them every image is scored for every class).
      labels: int (N,) classes of array ``images``, as the network's class indices.
      random_images: the pool random sets are drawn from; default ``images``.
      runs: R, CAVs per concept (each against its own random set) and random-vs-random CAVs; at least 2.
      cav: ``"logistic"`` or ``"mean_difference"``.
      alpha: the significance level, Bonferroni-corrected over every (concept, class, layer).
      concept_images: images per built-in concept.
      batch_size: images per gradient batch.
      seed: the random sets and the concepts' subsets.
      progress: a progress bar.

    Every concept and random set has the same size m: the smallest concept (at most the pool); each run draws m
    of a concept's images and m random ones.

    Returns:
      ``TCAV``.

    Raises:
      ValueError or TypeError naming the argument, before any compiling: concepts that are not images of the input
      size (or an empty or missing folder), sets smaller than 4, unknown classes or layers, ``runs < 2``.
    """
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    runs = check_int(runs, "runs", 2)
    cav = check_choice(cav, "cav", CAV_METHODS)
    alpha = check_real(alpha, "alpha", 0, 1, low_open=True, high_open=True)
    seed, batch_size = check_seed(seed), check_int(batch_size, "batch_size", 1)
    concept_images = check_int(concept_images, "concept_images", MIN_SET)
    target_ids = _targets(network, targets)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ArgumentTypeError("layers", f"expected a non-empty sequence of layer names, got {layers!r}")
    for layer in layers:
        network.check_layer(layer, "layers")
        if layer == network.output_layer:
            raise ArgumentError("layers", f"expected layers before the output layer {layer!r} (its logits are "
                                          "what is differentiated)")
        network.perturbed_fn(layer)
    layers = tuple(layers)
    if len(set(layers)) != len(layers):
        raise ArgumentError("layers", f"expected distinct layers, got {list(layers)}")
    if isinstance(images, Dataset):
        try:
            images = images.with_classes(network.class_names)  # labels as the network's class indices
        except ArgumentError as e:
            raise ArgumentError("images", e.message) from None
        images, labels = images.images, images.labels
    images = _check_images(network, images, "images")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ArgumentError("labels", f"expected {len(images)} int labels, got {labels.dtype} {labels.shape}")
    pool = images if random_images is None else _check_images(network, random_images, "random_images")
    concepts = _concepts(network, concepts, concept_images, seed)
    names = [network.class_names[t] for t in target_ids]
    scored = [np.arange(len(images)) if labels is None else np.flatnonzero(labels == t) for t in target_ids]
    if empty := [n for n, rows in zip(names, scored) if len(rows) == 0]:
        raise ArgumentError("targets", f"expected images of every target class, got none of {', '.join(empty)}")
    m = min(min(len(v) for v in concepts.values()), len(pool))
    if m < MIN_SET:
        raise ArgumentError("random_images", f"expected at least {MIN_SET} images to draw random sets from, got {len(pool)}")

    # The sets: run r fits concept c (m of its images) against random set B_r, and the null A_r against B_r.
    rng = np.random.default_rng(seed)
    c_count = len(concepts)
    offsets = np.cumsum([0] + [len(v) for v in concepts.values()])
    concept_rows = np.stack([np.stack([offsets[i] + rng.choice(len(v), m, replace=False) for _ in range(runs)])
                             for i, v in enumerate(concepts.values())])  # (C, R, m) rows of the bank
    draws = np.stack([rng.choice(len(pool), m, replace=False) for _ in range(2 * runs)])  # A_0.., B_0..
    used, inverse = np.unique(draws, return_inverse=True)
    random_rows = offsets[-1] + inverse.reshape(draws.shape)
    bank = np.concatenate([*concepts.values(), pool[used]])
    positive = np.concatenate([concept_rows.reshape(c_count * runs, m), random_rows[:runs]]).astype(np.int32)
    negative = np.concatenate([np.tile(random_rows[runs:], (c_count, 1)), random_rows[runs:]]).astype(np.int32)

    rows = np.concatenate(scored)
    row_targets = np.concatenate([np.full(len(s), t, np.int32) for s, t in zip(scored, target_ids)])
    which = np.concatenate([np.full(len(s), j) for j, s in enumerate(scored)])
    sharding = batch_sharding(None)
    size = round_up(min(batch_size, len(rows)), sharding.mesh.size)
    everywhere = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    params = jax.device_put(network.variables, everywhere)
    run_scores = np.zeros((c_count, len(target_ids), len(layers), runs))
    random_scores = np.zeros((len(target_ids), len(layers), runs))
    accuracy = np.zeros((c_count, len(layers), runs))
    with progress_bar(total=len(layers), desc="tcav", disable=not progress, unit="layer") as bar:
        for k, layer in enumerate(layers):
            features = layer_features(network, bank, layer=layer).reshape(len(bank), -1)
            most = max(1, min(len(positive), FIT_BYTES // max(1, 2 * m * features.shape[1] * 4 * 4)))
            chunk = max(c for c in range(1, most + 1) if len(positive) % c == 0)  # no remainder: one body to compile
            cavs, fit_accuracy = cav_program(cav, LOGISTIC_STEPS, chunk)(features, positive, negative)
            accuracy[:, k] = np.asarray(fit_accuracy)[:c_count * runs].reshape(c_count, runs)
            cavs_everywhere = jax.device_put(cavs, everywhere)  # fitted on one device, dotted on all
            program = _derivative_program(network.perturbed_fn(layer), network.layer_fn(layer),
                                          network.input_spec.to_input, sharding)
            counts = np.zeros((len(target_ids), len(positive)))
            for start in range(0, len(rows), size):
                batch = np.minimum(np.arange(start, start + size), len(rows) - 1)  # one shape: the last repeats a row
                signs = to_host(program(params, jax.device_put(images[rows[batch]], sharding),
                                        jax.device_put(row_targets[batch], sharding), cavs_everywhere))
                keep = min(size, len(rows) - start)
                np.add.at(counts, which[start:start + keep], signs[:keep])
            shares = counts / np.array([len(s) for s in scored])[:, None]  # (T, R_total)
            run_scores[:, :, k] = shares[:, :c_count * runs].reshape(len(target_ids), c_count, runs).transpose(1, 0, 2)
            random_scores[:, k] = shares[:, c_count * runs:]
            bar.update(1)
    p_values = significance(run_scores, random_scores[None])
    significant = p_values < alpha / p_values.size
    scores = np.where(significant, run_scores.mean(-1), np.nan)
    return TCAV(tuple(concepts), tuple(names), layers, scores, significant, p_values, run_scores, random_scores,
                accuracy, np.array([len(s) for s in scored], np.int64), runs, m, cav, alpha)
