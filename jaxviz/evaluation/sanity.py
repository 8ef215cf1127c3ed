"""The model-randomization sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Does a map depend on what the model learned? Re-initialise the model's
layers and compare each method's map on the trained model with its map on
the randomized one:

* ``"cascading"``: randomize the top layer, then the top two, ... down to the
  first (set ``j`` randomizes ``layers[:j + 1]``);
* ``"independent"``: randomize one layer at a time (set ``j`` randomizes ``layers[j]``).

Randomized variables come from the model's own initializers
(``Network.init``, with ``key(seed)``: one fresh draw, so a layer keeps the
same random weights in every set; drawn again from a key derived from the seed
where it equals the model's variables in some layer, as for an untrained model
initialized with that very key); a network without ``init`` gets
scale-matched Gaussians instead (each array replaced by draws with its own
mean and standard deviation), and the result says so. Every randomized set
and the trained one are stacked and evaluated in one ``vmap`` per method.

The similarity is the Spearman rank correlation, per image, between the
absolute maps (summed over channels; Grad-CAM unrectified, so that a map
rectified to all zeros leaves nothing undefined). A method passes where the
correlation falls towards 0 as layers are randomized; a map that does not
change when the model is destroyed explains the input, not the model. Where a
method's maps are constant (input x gradient of a black image, a dead layer)
the correlation is undefined (NaN) and the method gets no verdict.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from jaxviz.checks import ArgumentError, ArgumentTypeError, check_seed
from jaxviz.engine.backprop import plan_gradients
from jaxviz.engine.plan import signature
from jaxviz.methods import registry
from jaxviz.methods.base import explain
from jaxviz.methods.rise import seed_key
from jaxviz.models.network import Network

__all__ = ["DEFAULT_METHODS", "MODES", "SANITY_OPTIONS", "check_sanity_methods", "SanityCheck", "format_correlation", "randomization_layers",
           "randomization_test", "randomized_variables"]

DEFAULT_METHODS = ("saliency", "ig", "gradcam")  # the paper's; every method with randomized_maps can run
# the check's own defaults where they differ from the methods' (it runs every method once per randomized set)
SANITY_OPTIONS = {"n_steps": 16, "nt_samples": 8}
MODES = ("cascading", "independent")
PASS_THRESHOLD = 0.5
DRAWS = 4  # draws of the randomized variables before a layer that never changes is refused


@dataclasses.dataclass(frozen=True)
class SanityCheck:
    """The result of ``randomization_test``.

    Attributes:
      methods: the methods' registered names.
      layers: the randomized layers, top first.
      mode: ``"cascading"`` or ``"independent"``.
      correlations: method -> float (len(layers), N): Spearman correlation of each image's map on
        the trained model with its map on randomized set ``j`` (NaN where a map is constant).
      targets: int (N,): the explained output of each image (the trained model's prediction).
      initializer: ``"model"`` (``Network.init``) or ``"gaussian"`` (scale-matched draws).
    """

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    mode: str
    correlations: dict
    targets: np.ndarray
    initializer: str

    @property
    def labels(self) -> dict:
        """method -> its display name (figures, tables)."""
        return {m: registry.METHODS[m].label for m in self.methods}

    def mean(self) -> dict:
        """method -> float (len(layers),): the mean correlation over the images (NaNs left out)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {m: np.nanmean(c, axis=1) for m, c in self.correlations.items()}

    def final(self) -> dict:
        """method -> the mean correlation once every layer is randomized (cascading), or the mean over
        the layers (independent); NaN where it is undefined (every map constant)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {m: float(v[-1] if self.mode == "cascading" else np.nanmean(v)) for m, v in self.mean().items()}

    def passes(self, threshold: float = PASS_THRESHOLD) -> dict:
        """method -> whether ``final`` correlation is below ``threshold``; ``None`` where it is undefined
        (the maps are constant, e.g. input x gradient of a black image: no verdict)."""
        return {m: None if np.isnan(v) else bool(v < threshold) for m, v in self.final().items()}

    def sentence(self, threshold: float = PASS_THRESHOLD) -> str:
        """Which methods pass, with the numbers ("undefined" where the maps are constant)."""
        final, ok = self.final(), self.passes(threshold)
        where = "with every layer randomized" if self.mode == "cascading" else "averaged over single-layer randomizations"
        verdict = {True: "passes", False: "fails", None: "no verdict: constant maps"}
        parts = [f"{registry.METHODS[m].label} {format_correlation(final[m])} ({verdict[ok[m]]})"
                 for m in self.methods]
        return (f"Mean Spearman correlation with the trained model's map {where} (pass: below {threshold:g}): "
                f"{', '.join(parts)}.")


def format_correlation(value: float) -> str:
    """A correlation as text: two decimals, or ``"undefined"`` for NaN (a constant map has no ranks)."""
    return "undefined" if np.isnan(value) else f"{value:.2f}"


def randomization_layers(network: Network) -> tuple[str, ...]:
    """The layers with variables and no sublayer that has some, top first (the cascade's order)."""
    owners = [n for n in network.layer_names if network.variable_paths(n)]
    leaves = [n for n in owners if not any(o.startswith(n + "/") for o in owners)]
    return tuple(reversed(leaves))


def _key_path(path: tuple) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _gaussian_like(variables: Any, key: jax.Array) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    out = []
    for i, leaf in enumerate(leaves):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and arr.size > 1:
            noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i), arr.shape, jnp.float32))
            arr = (arr.mean() + arr.std() * noise).astype(arr.dtype)
        out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out)


def _fresh_variables(network: Network, key: jax.Array) -> tuple[Any, str]:
    """One draw of every variable: the model's initializers (``Network.init``), else scale-matched Gaussians."""
    if network.init is None:
        return _gaussian_like(network.variables, key), "gaussian"
    try:  # compiled: eagerly, every initializer op compiles on its own (12 s instead of 6 s for the CNN)
        fresh = jax.jit(network.init)(key)
    except jax.errors.JAXTypeError:  # an init that is not traceable (reads concrete values) runs eagerly
        fresh = network.init(key)
    if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(network.variables) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree_util.tree_leaves(fresh),
                                                        jax.tree_util.tree_leaves(network.variables))):
        raise ArgumentError("network", "its init(key) returns variables of another structure than network.variables")
    return fresh, "model"


def randomized_variables(network: Network, layers: Sequence[str], *, mode: str = "cascading",
                         seed: int = 0) -> tuple[Any, str]:
    """The trained variables and one randomized set per step, stacked on a leading axis.

    The fresh variables come from ``key(seed)``; where that draw equals the model's variables in some
    layer (an untrained model initialized with the same key), it is drawn again from
    ``fold_in(key(seed), 1)``, ``2``, ... (``DRAWS`` draws in all, then ``ValueError`` naming the layer).

    Returns:
      ``(stacked variables with len(layers) + 1 sets, set 0 the trained one; initializer)``.
    """
    key = seed_key(seed)
    trained, treedef = jax.tree_util.tree_flatten_with_path(network.variables)
    owned = {n: network.variable_paths(n) for n in layers}

    def belongs(path: tuple, chosen: Sequence[str]) -> bool:
        keys = _key_path(path)
        return any(keys[:len(p)] == p for n in chosen for p in owned[n])

    for draw in range(DRAWS):  # a draw equal to the model in some layer (an untrained model built with this very
        # key) would randomize nothing there: draw again from a key derived from the seed
        fresh, initializer = _fresh_variables(network, key if draw == 0 else jax.random.fold_in(key, draw))
        fresh_leaves = [np.asarray(f) for f in jax.tree_util.tree_leaves(fresh)]
        same = [n for n in layers if all(np.array_equal(f, np.asarray(t)) for (p, t), f in zip(trained, fresh_leaves)
                                         if belongs(p, [n]))]
        if not same:
            break
    else:
        raise ArgumentError("layers", f"randomizing {same[0]!r} leaves its variables as they are in {DRAWS} draws from "
                         f"seed {seed} (its initializer gives exactly these values); leave it out of layers")
    sets = [[np.asarray(leaf) for _, leaf in trained]]
    for j in range(len(layers)):
        chosen = layers[:j + 1] if mode == "cascading" else [layers[j]]
        sets.append([np.asarray(f, np.asarray(t).dtype) if belongs(p, chosen) else np.asarray(t)
                     for (p, t), f in zip(trained, fresh_leaves)])
    stacked = [np.stack(column) for column in zip(*sets)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(network.variables), stacked), initializer


def spearman(reference: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``reference`` (N, D) with each ``others[j]`` (P, N, D) row by row: (P, N);
    ties share their average rank; NaN where a row is constant."""
    ranks = rankdata(np.concatenate([reference[None], others]), axis=-1).astype(np.float64)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    ref, rest = ranks[0], ranks[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rest * ref).sum(-1) / np.sqrt((rest * rest).sum(-1) * (ref * ref).sum(-1))


def check_sanity_methods(network: Network, methods: Sequence[str], *, seed: int = 0,
                         **options: Any) -> tuple[tuple, dict]:
    """The methods (registered, with ``randomized_maps``) and their options (``SANITY_OPTIONS`` where not
    given), each method's requirements checked before any work: ``(methods, name -> options)``."""
    chosen = registry.resolve(methods, sanity=True)
    per_method = registry.method_options(chosen, {**SANITY_OPTIONS, "seed": seed, **options})
    explained = dataclasses.replace(explain(network, network.output_layer), f=network.score_fn(network.output_layer),
                                    softmax=False)  # the output layer's scores, as the check explains them
    for method in chosen:
        method.check(explained, per_method[method.name])
    return chosen, per_method


def randomization_test(network: Network, images: np.ndarray, *, methods: Sequence[str] = DEFAULT_METHODS,
                       mode: str = "cascading", layers: Sequence[str] | None = None, targets: Any = None,
                       seed: int = 0, chunk_size: int | None = None, memory_budget: int | None = None,
                       vmap_sets: bool | None = None, devices: Sequence[jax.Device] | None = None,
                       progress: bool = False, **options: Any) -> SanityCheck:
    """Adebayo et al.'s model-randomization test (see the module docstring).

    Args:
      network: the trained model.
      images: uint8 (N, H, W, C) of the network's input size.
      methods: registered names of methods the check can run (``registry.names(sanity=True)``: saliency,
        ixg, ig, smoothgrad, gradcam).
      mode: ``"cascading"`` (from the top layer down) or ``"independent"`` (one layer at a time).
      layers: the layers to randomize, in that order; default ``randomization_layers(network)``.
      targets: int (N,) outputs of the output layer to explain; default the trained model's argmax.
      seed: the randomized weights' (and SmoothGrad's noise, unless ``options`` give one) seed, in [0, 2**32).
      vmap_sets: evaluate the trained and every randomized set in one ``vmap`` over the stacked
        variables (default on accelerators), or one after the other through the same compiled
        program (default on CPU, where XLA runs convolutions vmapped over their kernels as
        grouped convolutions, 3.8x slower in benchmarks/results/gradients_cpu.json).
      chunk_size, memory_budget, devices, progress: as in ``jaxviz.saliency``.
      **options: the methods' options by name (``n_steps``, ``nt_samples``, ``stdevs``, ``cam_layer``...);
        ``SANITY_OPTIONS`` where not given (16 integration steps, 8 SmoothGrad samples), else the methods'
        defaults.

    Returns:
      ``SanityCheck`` with each method's correlations per randomized set and image.
    """
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    network.input_spec.check_images(images)
    if not isinstance(mode, str) or mode not in MODES:
        raise ArgumentError("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    if len(images) == 0:
        raise ArgumentError("images", "expected at least one image, got N = 0")
    seed = check_seed(seed)
    every = randomization_layers(network)
    if not every:
        keys = list(network.variables) if isinstance(network.variables, Mapping) else type(network.variables).__name__
        raise ArgumentError("network", f"none of its layers ({', '.join(network.layer_names)}) has variables of its own "
                         f"to randomize: a layer's variables are the subtree of network.variables under its name "
                         f"(variable_paths), and its keys are {keys}; key the variables by layer name")
    if layers is None:
        layers = every
    elif isinstance(layers, str) or not layers or any(n not in every for n in layers) or len(set(layers)) < len(layers):
        raise ArgumentError("layers", f"expected distinct layers with variables from {', '.join(every)}, got {layers!r}")
    layers = tuple(layers)
    chosen, per_method = check_sanity_methods(network, methods, seed=seed, **options)
    f = network.score_fn(network.output_layer)  # the output layer's scores (unit_scores_of), Grad-CAM's too
    x = network.to_input(images)
    scores = np.asarray(jax.jit(f)(network.variables, x))  # what the gradients explain: conv maps averaged
    network.check_finite(scores, images)  # NaN scores have no argmax and no gradient worth correlating
    if targets is None:
        targets = scores.argmax(-1)
    stacked, initializer = randomized_variables(network, layers, mode=mode, seed=seed)
    sets = len(layers) + 1
    if vmap_sets is None:
        vmap_sets = jax.default_backend() != "cpu"
    per_set = [stacked] if vmap_sets else [jax.tree_util.tree_map(lambda a, j=j: a[j], stacked) for j in range(sets)]
    made = []

    def plans():  # one plan per variable set, made once and shared by the methods
        if not made:
            made.extend(plan_gradients(f, x, params=v, targets=targets, units=None,
                                       params_sig=signature(network.variables)) for v in per_set)
        return made

    engine = {"chunk_size": chunk_size, "memory_budget": memory_budget, "devices": devices,
              "stacked": sets if vmap_sets else 0}
    correlations = {}
    for method in chosen:
        maps = method.randomized_maps(network, x, options=per_method[method.name], plans=plans, engine=engine,
                                      progress=progress and method.label)
        flat = np.asarray(maps).reshape(sets, len(x), -1)
        correlations[method.name] = spearman(flat[0], flat[1:]).astype(np.float32)
    return SanityCheck(tuple(m.name for m in chosen), layers, mode, correlations, np.asarray(plans()[0].targets),
                       initializer)
