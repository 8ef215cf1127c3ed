"""Any image model as a ``Network``: the one model interface every jaxviz analysis takes.

A ``Network`` holds a pure ``apply(variables, x, layer)`` returning one named
layer's activations, the ``variables`` it takes, the layer names in forward
order and an ``InputSpec`` (input size; how uint8 pixels become input)::

    net = from_cnn(CNN(), variables, CIFAR10_CLASSES)             # jaxviz's own CNN
    net = from_linen(module, variables, input_shape=(64, 64, 3))  # any flax.linen.Module
    net = from_nnx(module, input_shape=(64, 64, 3))               # any flax.nnx.Module
    net = from_function(apply, variables, layer_names=..., input_shape=...)  # anything else
    feats = net.uint8_fn("stage2")(net.variables, uint8_images)   # (N, 16, 16, 32)

Linen and nnx layers are submodules named by their paths joined with "/"
(``stage2/block0/conv1``, list items numbered: ``blocks/0``), in the order
their ``__call__`` returns (a block follows its sublayers); a layer's
activations are the output of its first call. Their ``apply`` traces the
whole model and returns one output: the later layers are dead code that XLA
drops under ``jax.jit``, which is how ``layer_fn`` and ``uint8_fn`` are run.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.data.images import check_uint8_images

__all__ = ["InputSpec", "LayerInfo", "Network", "resize_images", "resize_uint8"]

Path = tuple  # keys (str or int) from the root of ``variables`` to a subtree
_BATCH = 2  # batch of the abstract runs: a layer's output must keep it as its first axis


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _find(tree: Any, path: Path) -> Any | None:
    """``tree[path[0]][path[1]]...``, or ``None`` where that does not exist."""
    try:
        for key in path:
            tree = tree[key]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return tree


def _count(tree: Any) -> int:
    """Elements of the variables in ``tree``, but not of an nnx module's RNG state (the key and counter
    an ``nnx.Dropout`` or ``nnx.Rngs`` holds are no parameters; linen passes them to ``apply`` instead)."""
    from flax import nnx

    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return int(sum(math.prod(np.shape(leaf)) for leaf in leaves if not isinstance(leaf, nnx.RngState)))


def _array(tree: Any) -> Any | None:
    """The one array in ``tree`` (an array, or an nnx Variable holding one), else ``None``."""
    leaves = jax.tree_util.tree_leaves(tree)
    return leaves[0] if len(leaves) == 1 and hasattr(leaves[0], "ndim") else None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Input size, and how uint8 pixels become input: ``(images * scale - mean) / std``.

    Computed in float32 per channel, then cast to ``dtype``. The default is
    ``images / 255`` (the notebook's ``X.astype('float32') / 255``).

    Attributes:
      height, width, channels: the size of one input image.
      scale: positive factor applied first (divides by ``1 / scale`` when that is an integer).
      mean, std: optional per-channel values (``channels`` of them; ``std`` positive).
      dtype: the float dtype of the model input.
    """

    height: int
    width: int
    channels: int
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dtype: Any = np.float32

    def __post_init__(self):
        for field in ("height", "width", "channels"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 1:
                raise ArgumentError(f"{field}", f"expected a positive int, got {getattr(self, field)!r}")
            object.__setattr__(self, field, int(getattr(self, field)))
        if not isinstance(self.scale, (int, float, np.number)) or not 0 < float(self.scale) < math.inf:
            raise ArgumentError("scale", f"expected a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        for field in ("mean", "std"):
            if (value := getattr(self, field)) is not None:
                values = np.asarray(value, np.float64).reshape(-1)
                if values.size != self.channels or not np.all(np.isfinite(values)) or \
                        (field == "std" and np.any(values <= 0)):
                    raise ArgumentError(f"{field}", f"expected {self.channels} finite values (one per channel"
                                     f"{', positive' if field == 'std' else ''}), got {value!r}")
                object.__setattr__(self, field, tuple(float(v) for v in values))
        if not jnp.issubdtype(np.dtype(self.dtype), jnp.floating):
            raise ArgumentTypeError("dtype", f"expected a float dtype, got {np.dtype(self.dtype)}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return self.height, self.width, self.channels

    def check_images(self, images: Any, name: str = "images") -> None:
        """Raise ``TypeError`` unless ``images`` are uint8, ``ValueError`` unless (N, height, width, channels).

        Accepts numpy arrays and jax arrays (also traced ones, inside ``jit``).
        """
        if isinstance(images, np.ndarray):
            check_uint8_images(images, name)
        elif not hasattr(images, "dtype") or not hasattr(images, "shape"):
            raise ArgumentTypeError(f"{name}", f"expected a uint8 array (N, H, W, C) of pixels, got {type(images).__name__}")
        elif images.dtype != np.uint8:
            raise ArgumentTypeError(f"{name}", f"expected uint8 pixels 0..255 (N, H, W, C), got {images.dtype}; pass the raw "
                            "uint8 images, not model input: the network converts them itself")
        (h, w, c), shape = self.shape, tuple(images.shape)
        if len(shape) != 4:
            raise ArgumentError(f"{name}", f"expected shape (N, {h}, {w}, {c}), got {shape}")
        if shape[1:] != self.shape:
            if shape[1:3] != (h, w):
                hint = f"Resize them first, e.g. jaxviz.resize_images(images, {h}, {w})"
            elif (c, shape[3]) == (1, 3):
                hint = "The channels differ: jaxviz.data.to_grayscale(images) makes RGB grayscale"
            else:
                hint = "The channels differ: convert them to the channels the network takes"
            raise ArgumentError(f"{name}", f"the network takes {h}x{w} images with {c} channels (N, {h}, {w}, {c}); got "
                             f"{shape[1]}x{shape[2]} images with {shape[3]} channels. {hint}")

    def to_input(self, images: Any) -> Any:
        """uint8 (N, H, W, C) numpy or jax (also traced) -> ``dtype`` model input (numpy for numpy input).

        The one place where pixels become model input. ``x / 255`` and
        ``x * (1 / 255)`` differ in the last bit, so a ``scale`` of ``1 / k``
        divides by ``k``, as numpy's ``x / 255`` does (under ``jit`` XLA may
        rewrite the division; every jitted jaxviz program shares this one).
        """
        self.check_images(images)
        x, k = images.astype(np.float32), round(1.0 / self.scale)
        x = x / np.float32(k) if k >= 1 and 1.0 / k == self.scale else x * np.float32(self.scale)
        return self._normalized(x)

    def from_pixels(self, pixels: Any) -> Any:
        """float pixels in [0, 1] (N, H, W, C), jax (also traced, differentiable) or numpy -> ``dtype`` model
        input: ``to_input``'s conversion of ``pixels * 255`` (its float path: feature visualization optimizes
        these pixels). With the default ``scale`` of 1 / 255 the pixels are the input, before ``mean`` / ``std``.
        """
        k = round(1.0 / self.scale)
        factor = 255.0 / k if k >= 1 and 1.0 / k == self.scale else 255.0 * self.scale
        return self._normalized(pixels * np.float32(factor) if factor != 1.0 else pixels)

    def _normalized(self, x: Any) -> Any:
        """``(x - mean) / std`` in float32, as ``dtype``."""
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return x if x.dtype == self.dtype else x.astype(self.dtype)


def resize_uint8(images: jax.Array, height: int, width: int) -> jax.Array:
    """uint8 (N, h, w, C) -> uint8 (N, height, width, C) in a JAX program (traceable): bilinear, antialiased when
    shrinking, rounded; ``resize_images`` runs it over a host array in batches."""
    out = jax.image.resize(images.astype(jnp.float32), (images.shape[0], height, width, images.shape[3]),
                           method="bilinear", antialias=True)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


@jax.jit
def _resize(images: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
    return resize_uint8(images, like.shape[1], like.shape[2])


def resize_images(images: np.ndarray, height: int, width: int, *, batch_size: int = 256) -> np.ndarray:
    """uint8 (N, h, w, C) -> uint8 (N, height, width, C): bilinear (antialiased when shrinking), rounded.

    ``batch_size`` images go through each compiled call, bounding the float32 memory.
    """
    if getattr(images, "dtype", None) != np.uint8:
        raise ArgumentTypeError("images", f"expected uint8 pixels (N, h, w, C), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4:
        raise ArgumentError("images", f"expected shape (N, h, w, C), got {tuple(images.shape)}")
    for name, value in (("height", height), ("width", width), ("batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ArgumentError(f"{name}", f"expected a positive int, got {value!r}")
    images = np.asarray(images)
    if images.shape[1:3] == (height, width):
        return images.copy()
    out = np.empty((len(images), height, width, images.shape[3]), np.uint8)
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        out[i:i + len(chunk)] = _resize(chunk, jax.ShapeDtypeStruct((len(chunk), *out.shape[1:]), jnp.uint8))
    return out


def _layer_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise ArgumentTypeError("layer_names", f"expected a non-empty sequence of non-empty str, got {names!r}")
    if len(set(names)) != len(names):
        raise ArgumentError("layer_names", f"expected distinct names, got {list(names)}")
    return tuple(names)


def _class_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(c, str) for c in names):
        raise ArgumentTypeError("class_names", f"expected a sequence of str, got {names!r}")
    return tuple(names)


def unit_scores_of(out: jax.Array) -> jax.Array:
    """A layer's (N, ...) activations as (N, units): averaged over every axis between the batch and
    the last ((h, w) for conv maps); (N,) and (N, units) reshaped to (N, -1)."""
    return out.mean(axis=tuple(range(1, out.ndim - 1))) if out.ndim > 2 else out.reshape(out.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One row of ``Network.summary``: the output shape without the batch axis, the elements of
    the layer's variables (all collections, its sublayers' included; an nnx module's RNG state
    excluded) and its type ("" if unknown)."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    kind: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A model with named layers, as pure functions of ``(variables, x)``; hashes by identity.

    Attributes:
      apply: ``apply(variables, x, layer) -> (N, ...)`` activations of ``layer``
        (a str, static) for float input ``x`` (N, H, W, C).
      variables: the pytree ``apply`` takes.
      layer_names: every layer, in forward order.
      input_spec: the input size and the uint8 -> input conversion.
      class_names: names of the last layer's outputs, for a classifier.
      kernel_paths: layer -> keys of its conv or dense kernel in ``variables``.
      param_paths: layer -> keys of the subtrees ``summary`` counts for it;
        default: ``variables[*parts]`` and ``variables[collection][*parts]``
        for the "/"-separated parts of its name.
      layer_kinds: layer -> the type name ``summary`` shows.
      name: a display name.
      apply_perturbed: optional ``apply_perturbed(variables, x, layer, delta, output_layer) ->
        (activations of layer, activations of output_layer)`` with ``delta`` (shaped like the
        first) added to ``layer``'s activations on the way: the gradient with respect to a
        layer (Grad-CAM) exists through it. The adapters provide it.
      init: optional ``init(key) -> variables``: fresh variables from the model's own
        initializers (the randomization sanity check); the adapters of the CNN and of linen
        modules provide it.
    """

    apply: Callable[[Any, jax.Array, str], jax.Array] = dataclasses.field(repr=False)
    variables: Any = dataclasses.field(repr=False)
    layer_names: tuple[str, ...]
    input_spec: InputSpec
    class_names: tuple[str, ...] | None = None
    kernel_paths: Mapping[str, Path] = dataclasses.field(default_factory=dict, repr=False)
    param_paths: Mapping[str, tuple[Path, ...]] = dataclasses.field(default_factory=dict, repr=False)
    layer_kinds: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    name: str = ""
    apply_perturbed: Callable[[Any, jax.Array, str, jax.Array, str], tuple[jax.Array, jax.Array]] | None = \
        dataclasses.field(default=None, repr=False)
    init: Callable[[jax.Array], Any] | None = dataclasses.field(default=None, repr=False)
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # per-layer functions, shapes

    def __post_init__(self):
        if not callable(self.apply):
            raise ArgumentTypeError("apply", f"expected a callable apply(variables, x, layer), got {type(self.apply).__name__}")
        object.__setattr__(self, "layer_names", _layer_names(self.layer_names))
        if not isinstance(self.input_spec, InputSpec):
            raise ArgumentTypeError("input_spec", f"expected an InputSpec, got {type(self.input_spec).__name__}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", _class_names(self.class_names))
        for field in ("apply_perturbed", "init"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise ArgumentTypeError(f"{field}", f"expected a callable or None, got {type(getattr(self, field)).__name__}")
        for field in ("kernel_paths", "param_paths", "layer_kinds"):
            if unknown := [k for k in getattr(self, field) if k not in self.layer_names]:
                raise ArgumentError(f"{field}", f"expected keys from layer_names, got unknown layers {unknown}")
            object.__setattr__(self, field, types.MappingProxyType(dict(getattr(self, field))))
        for layer, path in self.kernel_paths.items():
            if _array(_find(self.variables, tuple(path))) is None:
                raise ArgumentError("kernel_paths", f"expected {layer!r} -> the keys of an array in variables, "
                                 f"got {tuple(path)}")

    def to_input(self, images: Any) -> Any:
        """uint8 pixels (N, H, W, C) -> this network's float input (see ``InputSpec.to_input``)."""
        return self.input_spec.to_input(images)

    @property
    def output_layer(self) -> str:
        """The last layer: the model's output (logits, for a classifier)."""
        return self.layer_names[-1]

    @property
    def feature_layer(self) -> str:
        """The layer before the output (the notebook's feature layer, ``fc1`` in the CNN); the
        only layer when there is one."""
        return self.layer_names[-2] if len(self.layer_names) > 1 else self.layer_names[-1]

    @property
    def is_classifier(self) -> bool:
        """Whether the last layer's outputs are named classes."""
        return self.class_names is not None

    def check_layer(self, layer: Any, name: str = "layer") -> None:
        """Raise ``ArgumentTypeError`` unless ``layer`` is a str, ``ArgumentError`` unless it is a layer name;
        both name the argument ``name``."""
        if not isinstance(layer, str):
            raise ArgumentTypeError(name, f"expected a layer name (str), got {type(layer).__name__}")
        if layer not in self.layer_names:
            raise ArgumentError(name, f"unknown layer {layer!r}; expected one of {', '.join(self.layer_names)}")

    def check_finite(self, outputs: Any, images: np.ndarray, *, layer: str | None = None, indices: Any = None,
                     name: str = "network") -> None:
        """Raise ``ValueError`` unless ``outputs``, ``layer``'s activations of the uint8 ``images``
        (default: the output layer's), are all finite: an explanation of NaN scores is no explanation.

        The one line names the layer, the images whose outputs are NaN or infinite (``indices``:
        their numbers, e.g. dataset indices; default 0..N-1) and the first layer, in forward order,
        whose activations of the first of them are not finite (found by running the layers on it).
        """
        layer = self.output_layer if layer is None else layer
        self.check_layer(layer)
        flat = np.asarray(outputs).reshape(len(outputs), -1)
        bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if not bad.size:
            return
        numbers = np.arange(len(flat)) if indices is None else np.asarray(indices).reshape(-1)
        shown = ", ".join(str(int(i)) for i in numbers[bad[:8]]) + (", ..." if bad.size > 8 else "")
        image = np.asarray(images)[bad[:1]]
        first = next((n for n in self.layer_names[:self.layer_names.index(layer) + 1]
                      if not np.isfinite(np.asarray(self.uint8_fn(n)(self.variables, image))).all()), layer)
        raise ArgumentError(f"{name}", f"the model's output is not finite: layer {layer!r} gives NaN or inf for "
                         f"{bad.size} of {len(flat)} images ({shown}); the first layer that does on image "
                         f"{int(numbers[bad[0]])} is {first!r}; check the weights and the input scaling")

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        if (value := self._cache.get(key)) is None:
            value = self._cache.setdefault(key, make())  # one object even when two threads race
        return value

    def layer_fn(self, layer: str) -> Callable[[Any, jax.Array], jax.Array]:
        """``f(variables, x) -> activations``, the same object for equal ``layer``: pass it with
        ``params=net.variables`` to ``jaxviz.occlude`` to reuse the compiled program."""
        self.check_layer(layer)
        apply = self.apply

        def fn(variables, x):
            return apply(variables, x, layer)

        fn.__name__ = fn.__qualname__ = f"{self.name or 'network'}:{layer}"
        return self._cached(("layer_fn", layer), lambda: fn)

    def score_fn(self, layer: str) -> Callable[[Any, jax.Array], jax.Array]:
        """``f(variables, x) -> (N, units)``: one score per unit (the last axis), the layer's
        activations averaged over every axis between the batch and the last (``unit_scores``'
        default: (h, w) for conv maps); cached per layer."""
        fn = self.layer_fn(layer)

        def scores(variables, x):
            return unit_scores_of(fn(variables, x))

        scores.__name__ = scores.__qualname__ = f"{self.name or 'network'}:{layer}:scores"
        return self._cached(("score_fn", layer), lambda: scores)

    def uint8_fn(self, layer: str) -> Callable[[Any, jax.Array], jax.Array]:
        """Jitted ``(variables, uint8 (N, H, W, C)) -> activations``, converting with
        ``input_spec.to_input`` inside the program; cached per layer."""
        fn, to_input = self.layer_fn(layer), self.input_spec.to_input
        return self._cached(("uint8_fn", layer), lambda: jax.jit(lambda v, images: fn(v, to_input(images))))

    def perturbed_fn(self, layer: str, output_layer: str | None = None) -> Callable:
        """``f(variables, x, delta) -> (activations of layer, activations of output_layer)``, with
        ``delta`` added to ``layer``'s activations; cached per pair of layers.

        Raises:
          ValueError: unknown layers, ``output_layer`` not after ``layer``, or a network without
            ``apply_perturbed`` (``from_function`` without it).
        """
        self.check_layer(layer)
        output_layer = self.output_layer if output_layer is None else output_layer
        self.check_layer(output_layer, "output_layer")
        if self.layer_names.index(output_layer) <= self.layer_names.index(layer):
            raise ArgumentError("output_layer", f"expected a layer after {layer!r}, got {output_layer!r}")
        if self.apply_perturbed is None:
            raise ArgumentError("network", f"{self.name or 'this network'} has no apply_perturbed, so no gradient with "
                             "respect to a layer; pass apply_perturbed= to jaxviz.from_function")
        apply = self.apply_perturbed

        def fn(variables, x, delta):
            return apply(variables, x, layer, delta, output_layer)

        fn.__name__ = fn.__qualname__ = f"{self.name or 'network'}:{layer}+delta:{output_layer}"
        return self._cached(("perturbed_fn", layer, output_layer), lambda: fn)

    def spatial_layers(self) -> tuple[str, ...]:
        """The layers with (h, w, channels) maps, in forward order."""
        return tuple(n for n in self.layer_names if len(self.output_shape(n)) == 3)

    def with_output_shapes(self, shapes: Mapping[str, Sequence[int]]) -> Network:
        """This network, knowing the output shapes (layer -> shape without the batch axis) that an adapter
        already found while tracing it, so ``output_shape`` need not trace again. Returns ``self``."""
        for layer, shape in shapes.items():
            self._cache[("shape", layer)] = tuple(int(d) for d in shape)
        return self

    def output_shape(self, layer: str) -> tuple[int, ...]:
        """The layer's activation shape without the batch axis, by ``jax.eval_shape`` (no compute)."""
        fn, x = self.layer_fn(layer), jax.ShapeDtypeStruct((1, *self.input_spec.shape), self.input_spec.dtype)
        return self._cached(("shape", layer), lambda: tuple(jax.eval_shape(fn, self.variables, x).shape[1:]))

    def num_units(self, layer: str) -> int:
        """How many units ``layer`` has: the last axis of its output shape (a conv layer's channels, a dense
        layer's width; 1 for a scalar per image), the number of scores ``score_fn(layer)`` gives per image.

        Raises:
          ValueError / TypeError: unknown layer.
        """
        shape = self.output_shape(layer)
        return int(shape[-1]) if shape else 1

    def _kernel(self, layer: str) -> Any | None:
        path = self.kernel_paths.get(layer)
        return None if path is None else _array(_find(self.variables, tuple(path)))

    def conv_layers(self) -> tuple[str, ...]:
        """The layers with a 4-D (kh, kw, in, out) kernel, in forward order."""
        return tuple(n for n in self.layer_names if getattr(self._kernel(n), "ndim", 0) == 4)

    def kernel(self, layer: str) -> np.ndarray:
        """The conv kernel of ``layer``, float32 (kh, kw, in, out); ``ValueError`` naming the conv
        layers if it has none."""
        self.check_layer(layer)
        if getattr(kernel := self._kernel(layer), "ndim", 0) != 4:
            raise ArgumentError("layer", f"{layer!r} has no conv kernel (kh, kw, in, out); layers with conv kernels: "
                             f"{', '.join(self.conv_layers()) or 'none'}")
        return np.asarray(kernel, np.float32)

    @property
    def num_params(self) -> int:
        """Elements of all the variables (params, batch statistics...; not an nnx module's RNG state)."""
        return _count(self.variables)

    def variable_paths(self, layer: str) -> tuple[Path, ...]:
        """The keys of the subtrees of ``variables`` that belong to ``layer`` (its sublayers' included)."""
        self.check_layer(layer)
        parts = tuple(layer.split("/"))
        paths = self.param_paths.get(layer, [parts, *((c, *parts) for c in (
            self.variables if isinstance(self.variables, Mapping) else ()))])
        return tuple(tuple(p) for p in paths if _find(self.variables, tuple(p)) is not None)

    def _params(self, layer: str) -> int:
        return sum(_count(_find(self.variables, p)) for p in self.variable_paths(layer))

    def summary(self) -> list[LayerInfo]:
        """One ``LayerInfo`` per layer, in forward order, counted from the variables' shapes."""
        return [LayerInfo(n, self.output_shape(n), self._params(n), self.layer_kinds.get(n, ""))
                for n in self.layer_names]

    def summary_table(self) -> str:
        """``summary`` as a fixed-width text table, and the total of all variables."""
        rows = [(r.name, r.kind, str((None, *r.output_shape)), f"{r.params:,}") for r in self.summary()]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("Layer", "Type", "Output shape"))]
        line = "  ".join(f"{{:<{w}}}" for w in widths) + "  {:>12}"
        lines = [line.format("Layer", "Type", "Output shape", "Params")]
        rule = "-" * len(lines[0])
        lines += [rule, *(line.format(*r) for r in rows), rule, f"Total params: {self.num_params:,}"]
        if any(a.startswith(b + "/") for a in self.layer_names for b in self.layer_names):
            lines.append("(a layer's count includes its sublayers')")
        return "\n".join(lines)
