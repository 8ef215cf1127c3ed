"""Which layers represent the same thing: linear centered kernel alignment (CKA) between every pair of layers.

``cka(network, images)`` compares every pair of the network's layers (and,
with ``other=``, each of them with each layer of a second network on the same
images) by linear CKA (Kornblith et al., ICML 2019): for the features X (N, D)
and Y (N, D') of one set of images, with linear Gram matrices K = X Xᵀ and
L = Y Yᵀ,

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

1 for the same representation up to rotation and scale, near 0 for unrelated
ones.

``method="minibatch"`` (the default) is the estimator of Nguyen, Raghu &
Kornblith (ICLR 2021): the images are split, in a seeded random order, into
minibatches of near-equal size; each minibatch adds the unbiased HSIC (Song
et al. 2012) of its Gram matrices to a running sum of every pair, and
CKA = ΣHSIC(K, L) / sqrt(ΣHSIC(K, K) ΣHSIC(L, L)). Nothing N x N or N x D is
ever held, so it streams any sliceable dataset. The order is random because
the estimator assumes i.i.d. minibatches, and datasets are often sorted by
class (the embedded sample is).

One compiled program takes a block of minibatches, one per device: every
layer's activations come from one forward pass (each layer is a function of
the same input in one jitted program, and XLA computes their shared prefix
once), are centred over the minibatch, turned into a Gram matrix, and every
pair's HSIC is computed and ``psum``-ed over devices. The host adds the blocks
in float64. With ``checkpoint=`` a completion record of the running sums is
written after every block (``runs.store``: atomic, checksummed), so a killed
call resumes; with ``jax.distributed``, every process reads its devices'
minibatches and the sums span all of them.

``method="full"`` is one minibatch of all N images (Gram matrices of N x N per
layer: small N only), with the unbiased HSIC, or ``hsic="biased"`` for
Kornblith et al.'s original estimator tr(KHLH) / (N - 1)².

Centring the features over the minibatch before the Gram matrix does not
change either estimator (each is invariant to K_ij -> K_ij + f(i) + f(j) + c)
but keeps float32 from cancelling: post-ReLU features share a large mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxviz._batching import batch_sharding
from jaxviz._io import LockHeldError, path_lock
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, ArgumentTypeError, check_bool, check_choice, check_int, check_seed
from jaxviz.models.network import Network, resize_uint8
from jaxviz.runs import store
from jaxviz.runs.dataset_run import check_source
from jaxviz.runs.store import fingerprint, settings_key
from jaxviz.runs.streaming import Blocks, Rows, barrier, host, replicate

__all__ = ["CKA", "CKA_BATCH_SIZE", "cka", "cka_program", "minibatches", "pairwise_hsic"]

CKA_BATCH_SIZE = 256  # images per minibatch (Nguyen et al. use 256)
MIN_BATCH = 4  # the unbiased HSIC divides by n (n - 3)
METHODS = ("minibatch", "full")
ESTIMATORS = ("unbiased", "biased")


@dataclasses.dataclass(frozen=True)
class CKA:
    """Linear CKA between the layers of a network (rows) and those of itself or another network (columns).

    Attributes:
      matrix: float64 (L, L'): CKA of ``layers[i]`` and ``other_layers[j]`` (NaN where a layer is constant over
        the images).
      layers: the L layers of the network (rows).
      other_layers: the L' layers of the other network (columns); ``layers`` without one.
      hsic_sums: float64 (L + L', L + L'): the HSIC of every pair of the layers, summed over the minibatches
        (``layers`` then ``other_layers``); (L, L) when neither ``other`` nor ``other_layers`` was given.
      method: ``"minibatch"`` or ``"full"``.
      estimator: ``"unbiased"`` or ``"biased"`` HSIC.
      images: N, the images compared on.
      batch_size: images per minibatch (at most; N for ``"full"``).
      batches: the minibatches summed.
      seed: the seed of the minibatches' order (None: in dataset order).
      network, other: the networks' names (``other`` "" without one).
    """

    matrix: np.ndarray
    layers: tuple[str, ...]
    other_layers: tuple[str, ...]
    hsic_sums: np.ndarray
    method: str
    estimator: str
    images: int
    batch_size: int
    batches: int
    seed: int | None
    network: str = ""
    other: str = ""

    def table(self, digits: int = 2) -> str:
        """The matrix as fixed-width text: one row per layer of ``layers``, one column per ``other_layers``."""
        width = max(digits + 3, *(len(name) for name in self.other_layers))
        first = max(len(name) for name in self.layers)
        lines = [" " * first + "  " + "  ".join(name.rjust(width) for name in self.other_layers)]
        for name, row in zip(self.layers, self.matrix):
            lines.append(name.ljust(first) + "  " + "  ".join(
                ("nan" if not np.isfinite(v) else f"{v:.{digits}f}").rjust(width) for v in row))
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The result as JSON values (NaN as null)."""
        return {"layers": list(self.layers), "other_layers": list(self.other_layers),
                "matrix": [[None if not np.isfinite(v) else float(v) for v in row] for row in self.matrix],
                "method": self.method, "hsic": self.estimator, "images": self.images, "batch_size": self.batch_size,
                "batches": self.batches, "seed": self.seed, "network": self.network, "other": self.other}


def pairwise_hsic(grams: jax.Array, n: jax.Array, *, biased: bool = False) -> jax.Array:
    """The HSIC of every pair of Gram matrices of one minibatch.

    Args:
      grams: float32 (M, b, b), symmetric, of centred features, with the rows and columns of padding zero;
        for the unbiased estimator also with a zero diagonal.
      n: the number of real rows (a traced scalar; at least 4 for the unbiased estimator, 2 for the biased).
      biased: Kornblith et al.'s tr(K H L H) / (n - 1)² (the features are centred, so H K H = K) instead of the
        unbiased estimator of Song et al. (2012)::

            [tr(K L) + 1ᵀK1 1ᵀL1 / ((n - 1)(n - 2)) - 2 / (n - 2) 1ᵀK L1] / (n (n - 3))

    Returns:
      float32 (M, M).
    """
    trace = jnp.einsum("lij,mij->lm", grams, grams, precision="highest")
    if biased:
        return trace / (n - 1) ** 2
    sums = grams.sum((1, 2))
    rows = grams.sum(2)  # K1: K is symmetric, so 1ᵀK L1 = (K1)·(L1)
    cross = jnp.einsum("li,mi->lm", rows, rows, precision="highest")
    return (trace + jnp.outer(sums, sums) / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _gram(features: jax.Array, valid: jax.Array, n: jax.Array, zero_diagonal: bool) -> jax.Array:
    """(b, ...) activations -> the (b, b) linear Gram matrix of the features centred over the valid rows."""
    x = features.reshape(features.shape[0], -1).astype(jnp.float32)
    mean = (x * valid[:, None]).sum(0) / jnp.maximum(n, 1)
    x = (x - mean) * valid[:, None]
    gram = jnp.einsum("id,jd->ij", x, x, precision="highest")
    return gram * (1 - jnp.eye(gram.shape[0], dtype=gram.dtype)) if zero_diagonal else gram


@functools.lru_cache(maxsize=16)
def cka_program(fs: tuple[tuple[int, Callable], ...], to_inputs: tuple[Callable, ...],
                sizes: tuple[tuple[int, int] | None, ...], mesh: Mesh, biased: bool) -> Callable:
    """``(params (one per network), images uint8 (D b, H, W, C), valid float32 (D b,)) -> float32 (M, M)``: the
    HSIC of every pair of the M layers ``fs`` ((network index, layer function) each) on each device's
    minibatch of b rows (``valid`` 0 for padding), summed over the devices; a minibatch of fewer than 4 real rows
    (2 for ``biased``) adds 0. A network whose ``sizes`` entry is (height, width) sees the images resized to it."""
    least = 2 if biased else MIN_BATCH

    def local(params, images, valid):
        n = valid.sum()
        inputs = [to_input(images if size is None else resize_uint8(images, *size))
                  for to_input, size in zip(to_inputs, sizes)]
        grams = jnp.stack([_gram(f(params[i], inputs[i]), valid, n, not biased) for i, f in fs])
        hsic = pairwise_hsic(grams, n, biased=biased)
        return jax.lax.psum(jnp.where(n >= least, hsic, 0.0), "batch")

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch"), P("batch")), out_specs=P(),
                                 check_vma=False))


def minibatches(n: int, batch_size: int, *, seed: int | None = 0) -> list[np.ndarray]:
    """The images' minibatches: ``ceil(n / batch_size)`` of near-equal size (at most ``batch_size``, sizes differ
    by at most 1), in a random order of ``seed`` (None: dataset order); each sorted (reads go forward)."""
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, -(-n // batch_size))]


def _check_layers(network: Network, layers: Any, name: str) -> tuple[str, ...]:
    if layers is None:
        return network.layer_names
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise ArgumentTypeError(name, f"expected a sequence of layer names, got {type(layers).__name__}")
    if not layers:
        raise ArgumentError(name, "expected at least one layer, got none")
    for layer in layers:
        network.check_layer(layer, name)
    if len(set(layers)) != len(layers):
        raise ArgumentError(name, f"expected distinct layers, got {list(layers)}")
    return tuple(layers)


def cka(network: Network, images: Any, layers: Sequence[str] | None = None, *, other: Network | None = None,
        other_layers: Sequence[str] | None = None, batch_size: int = CKA_BATCH_SIZE, method: str = "minibatch",
        hsic: str = "unbiased", seed: int | None = 0, checkpoint: str | os.PathLike | None = None,
        progress: bool = False) -> CKA:
    """Linear CKA between every pair of layers, or between the layers of two networks, over a set of images.

    Args:
      network: the model (rows of the matrix).
      images: uint8 (N, H, W, C) of the network's input size, sliceable (numpy, memory map, zarr, a ``Dataset``);
        only minibatches are read.
      layers: the network's layers; default all.
      other: a second network on the same images (the columns), of the same channels; default ``network``. Of
        another input size, it sees the images resized (bilinear, antialiased, rounded: ``resize_images``).
      other_layers: its layers; default all of ``other`` (with ``other`` None: ``layers``).
      batch_size: images per minibatch, at most (``"minibatch"``); the N images make ``ceil(N / batch_size)``
        minibatches of near-equal size, each of at least 4.
      method: ``"minibatch"`` (streamed; Nguyen et al.) or ``"full"`` (one Gram matrix of N x N per layer).
      hsic: ``"unbiased"``, or ``"biased"`` (``"full"`` only: Kornblith et al.'s estimator).
      seed: the order the minibatches are drawn in; None takes the dataset order (biased on a sorted dataset).
      checkpoint: a folder for completion records: a call killed part way and run again with the same folder and
        arguments continues from its last record (a folder with another call's records is refused).
      progress: a progress bar (process 0).

    Returns:
      ``CKA`` with ``matrix`` float64 (L, L').

    Raises:
      ValueError naming the argument: unknown or repeated layers, minibatches of fewer than 4 images, another
      network of other input channels, an unknown method or estimator, a checkpoint folder of other arguments.
      BlockingIOError: another call holds the checkpoint folder.
    """
    if not isinstance(network, Network):
        raise ArgumentTypeError("network", f"expected a jaxviz.Network, got {type(network).__name__}")
    if other is not None and not isinstance(other, Network):
        raise ArgumentTypeError("other", f"expected a jaxviz.Network or None, got {type(other).__name__}")
    images = check_source(images, network)
    n = int(images.shape[0])
    layers = _check_layers(network, layers, "layers")
    if other is not None and other.input_spec.channels != network.input_spec.channels:
        raise ArgumentError("other", f"expected a network of {network.input_spec.channels} input channels (it sees "
                                     f"the same images), got {other.input_spec.channels}")
    columns = other_layers is not None or other is not None  # columns of their own, else the square of ``layers``
    other_layers = _check_layers(network if other is None else other,
                                 (layers if other is None else None) if other_layers is None else other_layers,
                                 "other_layers")
    method = check_choice(method, "method", METHODS)
    estimator = check_choice(hsic, "hsic", ESTIMATORS)
    if method == "minibatch" and estimator == "biased":
        raise ArgumentError("hsic", "expected 'unbiased' with method='minibatch' (a sum of biased minibatch "
                                    "estimates does not approach CKA), got 'biased'; use method='full'")
    batch_size = check_int(batch_size, "batch_size", MIN_BATCH)
    seed = None if seed is None else check_seed(seed)
    progress = check_bool(progress, "progress")
    parts = [np.arange(n)] if method == "full" else minibatches(n, batch_size, seed=seed)
    least = 2 if estimator == "biased" else MIN_BATCH
    if (smallest := min(len(p) for p in parts)) < least:
        raise ArgumentError("images" if method == "full" or n < least else "batch_size",
                            f"expected minibatches of at least {least} images (the {estimator} HSIC needs them); "
                            f"{n} images in minibatches of at most {batch_size} give one of {smallest}")
    folder = None if checkpoint is None else store.resolve(checkpoint)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ArgumentError("checkpoint", f"expected a folder, got the file {str(checkpoint)!r}")

    nets = (network,) if other is None else (network, other)
    fs = tuple((0, network.layer_fn(layer)) for layer in layers)
    if columns:  # a layer in both is computed once (XLA shares it), its Gram matrix twice
        fs += tuple((len(nets) - 1, nets[-1].layer_fn(layer)) for layer in other_layers)
    mesh = batch_sharding(None).mesh
    sizes = tuple(None if net.input_spec.shape == network.input_spec.shape else
                  (net.input_spec.height, net.input_spec.width) for net in nets)
    program = cka_program(fs, tuple(net.input_spec.to_input for net in nets), sizes, mesh, estimator == "biased")
    key = settings_key(format=1, models=[fingerprint(net.variables) for net in nets], layers=layers,
               other_layers=other_layers if columns else None, method=method, hsic=estimator,
               parts=fingerprint(np.concatenate(parts)),
               data=fingerprint(np.asarray(images[:1]), np.asarray(images[-1:])), n=n)
    lead = jax.process_index() == 0
    try:
        with path_lock(folder) if folder is not None and lead else contextlib.nullcontext():
            sums = _sum(program, nets, images, parts, mesh, folder, key, progress)
    except LockHeldError as e:
        raise BlockingIOError(f"checkpoint: another jaxviz cka call is using {str(folder)!r} "
                              f"(lock file {str(e.lock)!r} held by pid {e.pid})") from None
    rows = len(layers)
    scale = np.sqrt(np.clip(np.diag(sums), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.where(np.outer(scale, scale) > 0, sums / np.outer(scale, scale), np.nan)
    matrix = full[:rows, rows:] if columns else full
    return CKA(matrix, layers, other_layers, sums, method, estimator, n, max(len(p) for p in parts), len(parts),
               None if method == "full" else seed, network.name, "" if other is None else other.name)


def _sum(program, nets, images, parts, mesh, folder: Path | None, key: str, progress: bool) -> np.ndarray:
    """Σ over the minibatches of the HSIC of every pair, resumed from and recorded in ``folder``."""
    devices, width = mesh.size, max(len(p) for p in parts)
    steps = -(-len(parts) // devices)
    state = None
    if folder is not None:
        settings = store.read_json(folder / "settings.json") if (folder / "settings.json").exists() else None
        if settings is not None and settings != {"jaxviz": "cka", "key": key}:
            raise ArgumentError("checkpoint", f"expected a folder of this call's records, got {str(folder)!r} "
                                              "holding another call's (other arguments); use another folder")
        if settings is None and jax.process_index() == 0:
            folder.mkdir(parents=True, exist_ok=True)
            store.write_json(folder / "settings.json", {"jaxviz": "cka", "key": key})
        _, state, _ = store.latest_record(folder)
    start, total = (0, None) if state is None else (int(state["step"]), state["sums"])
    blocks = Blocks(images, devices * width, NamedSharding(mesh, P("batch")))
    params = replicate(NamedSharding(mesh, P()), tuple(net.variables for net in nets))
    lead = jax.process_index() == 0
    with progress_bar(total=len(parts), desc="cka", disable=not (progress and lead), unit="batch",
                      initial=min(start * devices, len(parts))) as bar:
        for step in range(start, steps):
            local, valid = [], []
            for slot in range(blocks.lo // width, blocks.hi // width):  # this process's devices' minibatches
                index = step * devices + slot
                part = parts[index] if index < len(parts) else np.zeros(0, np.int64)
                chunk = np.zeros((width, *images.shape[1:]), np.uint8)
                chunk[:len(part)] = Rows(images, part)[:]
                local.append(chunk)
                valid.append(np.arange(width) < len(part))
            hsic = host(program(params, blocks.put(np.concatenate(local)),
                                blocks.put(np.concatenate(valid).astype(np.float32)))).astype(np.float64)
            total = hsic if total is None else total + hsic
            if folder is not None and lead:
                store.save_record(folder, step + 1, {"step": np.int64(step + 1), "sums": total})
            bar.update(min((step + 1) * devices, len(parts)) - min(step * devices, len(parts)))
    barrier("jaxviz-cka")
    return total
