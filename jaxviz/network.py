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

__all__ = ["InputSpec", "LayerInfo", "Network", "from_cnn", "from_function", "from_linen", "from_nnx",
           "resize_images"]

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
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def _array(tree: Any) -> Any | None:
    """The one array in ``tree`` (an array, or an nnx Variable holding one), else ``None``."""
    leaves = jax.tree_util.tree_leaves(tree)
    return leaves[0] if len(leaves) == 1 and hasattr(leaves[0], "ndim") else None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Input size, and how uint8 pixels become input: ``(images * scale - mean) / std``.

    Computed in float32 per channel, then cast to ``dtype``. The default is
    ``images / 255``, bitwise what ``jaxviz.to_model_input`` computes.

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
                raise ValueError(f"{field}: expected a positive int, got {getattr(self, field)!r}")
            object.__setattr__(self, field, int(getattr(self, field)))
        if not isinstance(self.scale, (int, float, np.number)) or not 0 < float(self.scale) < math.inf:
            raise ValueError(f"scale: expected a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        for field in ("mean", "std"):
            if (value := getattr(self, field)) is not None:
                values = np.asarray(value, np.float64).reshape(-1)
                if values.size != self.channels or not np.all(np.isfinite(values)) or \
                        (field == "std" and np.any(values <= 0)):
                    raise ValueError(f"{field}: expected {self.channels} finite values (one per channel"
                                     f"{', positive' if field == 'std' else ''}), got {value!r}")
                object.__setattr__(self, field, tuple(float(v) for v in values))
        if not jnp.issubdtype(np.dtype(self.dtype), jnp.floating):
            raise TypeError(f"dtype: expected a float dtype, got {np.dtype(self.dtype)}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return self.height, self.width, self.channels

    def check_images(self, images: Any, name: str = "images") -> None:
        """Raise ``TypeError`` unless ``images`` are uint8, ``ValueError`` unless (N, height, width, channels)."""
        if not hasattr(images, "dtype") or not hasattr(images, "shape"):
            raise TypeError(f"{name}: expected a uint8 array (N, H, W, C) of pixels, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise TypeError(f"{name}: expected uint8 pixels 0..255 (N, H, W, C), got {images.dtype}; pass the raw "
                            "uint8 images, not model input: the network converts them itself")
        (h, w, c), shape = self.shape, tuple(images.shape)
        if len(shape) != 4:
            raise ValueError(f"{name}: expected shape (N, {h}, {w}, {c}), got {shape}")
        if shape[1:] != self.shape:
            raise ValueError(f"{name}: the network takes {h}x{w} images with {c} channels (N, {h}, {w}, {c}); got "
                             f"{shape[1]}x{shape[2]} images with {shape[3]} channels. Resize them first, e.g. "
                             f"jaxviz.resize_images(images, {h}, {w})")

    def to_input(self, images: Any) -> Any:
        """uint8 (N, H, W, C) numpy or jax (also traced) -> ``dtype`` model input (numpy for numpy input).

        The one place where pixels become model input. ``x / 255`` and
        ``x * (1 / 255)`` differ in the last bit, so a ``scale`` of ``1 / k``
        divides by ``k``, as ``to_model_input`` (and, under jit, XLA's
        rewrite of it in ``jaxviz.model.uint8_program``) does.
        """
        self.check_images(images)
        x, k = images.astype(np.float32), round(1.0 / self.scale)
        x = x / np.float32(k) if k >= 1 and 1.0 / k == self.scale else x * np.float32(self.scale)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return x if x.dtype == self.dtype else x.astype(self.dtype)


@jax.jit
def _resize(images: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
    out = jax.image.resize(images.astype(jnp.float32), like.shape, method="bilinear", antialias=True)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def resize_images(images: np.ndarray, height: int, width: int, *, batch_size: int = 256) -> np.ndarray:
    """uint8 (N, h, w, C) -> uint8 (N, height, width, C): bilinear (antialiased when shrinking), rounded.

    ``batch_size`` images go through each compiled call, bounding the float32 memory.
    """
    if getattr(images, "dtype", None) != np.uint8:
        raise TypeError(f"images: expected uint8 pixels (N, h, w, C), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4:
        raise ValueError(f"images: expected shape (N, h, w, C), got {tuple(images.shape)}")
    for name, value in (("height", height), ("width", width), ("batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    images = np.asarray(images)
    if images.shape[1:3] == (height, width):
        return images.copy()
    out = np.empty((len(images), height, width, images.shape[3]), np.uint8)
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        out[i:i + len(chunk)] = _resize(chunk, jax.ShapeDtypeStruct((len(chunk), *out.shape[1:]), jnp.uint8))
    return out


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One row of ``Network.summary``: the output shape without the batch axis, the elements of
    the layer's variables (all collections, its sublayers' included) and its type ("" if unknown)."""

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
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # per-layer functions, shapes

    def __post_init__(self):
        if not callable(self.apply):
            raise TypeError(f"apply: expected a callable apply(variables, x, layer), got {type(self.apply).__name__}")
        object.__setattr__(self, "layer_names", _layer_names(self.layer_names))
        if not isinstance(self.input_spec, InputSpec):
            raise TypeError(f"input_spec: expected an InputSpec, got {type(self.input_spec).__name__}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", _class_names(self.class_names))
        for field in ("kernel_paths", "param_paths", "layer_kinds"):
            if unknown := [k for k in getattr(self, field) if k not in self.layer_names]:
                raise ValueError(f"{field}: expected keys from layer_names, got unknown layers {unknown}")
            object.__setattr__(self, field, types.MappingProxyType(dict(getattr(self, field))))
        for layer, path in self.kernel_paths.items():
            if _array(_find(self.variables, tuple(path))) is None:
                raise ValueError(f"kernel_paths: expected {layer!r} -> the keys of an array in variables, "
                                 f"got {tuple(path)}")

    @property
    def is_classifier(self) -> bool:
        """Whether the last layer's outputs are named classes."""
        return self.class_names is not None

    def check_layer(self, layer: Any) -> None:
        """Raise ``TypeError`` unless ``layer`` is a str, ``ValueError`` unless it is a layer name."""
        if not isinstance(layer, str):
            raise TypeError(f"layer: expected a layer name (str), got {type(layer).__name__}")
        if layer not in self.layer_names:
            raise ValueError(f"layer: unknown layer {layer!r}; expected one of {', '.join(self.layer_names)}")

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

    def uint8_fn(self, layer: str) -> Callable[[Any, jax.Array], jax.Array]:
        """Jitted ``(variables, uint8 (N, H, W, C)) -> activations``, converting with
        ``input_spec.to_input`` inside the program; cached per layer."""
        fn, to_input = self.layer_fn(layer), self.input_spec.to_input
        return self._cached(("uint8_fn", layer), lambda: jax.jit(lambda v, images: fn(v, to_input(images))))

    def output_shape(self, layer: str) -> tuple[int, ...]:
        """The layer's activation shape without the batch axis, by ``jax.eval_shape`` (no compute)."""
        fn, x = self.layer_fn(layer), jax.ShapeDtypeStruct((1, *self.input_spec.shape), self.input_spec.dtype)
        return self._cached(("shape", layer), lambda: tuple(jax.eval_shape(fn, self.variables, x).shape[1:]))

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
            raise ValueError(f"layer: {layer!r} has no conv kernel (kh, kw, in, out); layers with conv kernels: "
                             f"{', '.join(self.conv_layers()) or 'none'}")
        return np.asarray(kernel, np.float32)

    @property
    def num_params(self) -> int:
        """Elements of all the variables (params, batch statistics...)."""
        return _count(self.variables)

    def _params(self, layer: str) -> int:
        parts = tuple(layer.split("/"))
        paths = self.param_paths.get(layer, [parts, *((c, *parts) for c in (
            self.variables if isinstance(self.variables, Mapping) else ()))])
        return sum(_count(_find(self.variables, tuple(p))) for p in paths)

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


# --------------------------------------------------------------------------- adapters


def _layer_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"layer_names: expected a non-empty sequence of non-empty str, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"layer_names: expected distinct names, got {list(names)}")
    return tuple(names)


def _class_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(c, str) for c in names):
        raise TypeError(f"class_names: expected a sequence of str, got {names!r}")
    return tuple(names)


def _check_classes(names: Any, shape: tuple[int, ...], what: str) -> tuple[str, ...] | None:
    """``class_names`` checked against ``what``'s output shape (without the batch axis)."""
    if names is None:
        return None
    names = _class_names(names)
    if len(shape) != 1:
        raise ValueError(f"class_names: given, so {what} must have shape (N, classes); it has (N, "
                         f"{', '.join(map(str, shape))})")
    if shape[0] != len(names):
        raise ValueError(f"class_names: {what} has {shape[0]} outputs, so expected {shape[0]} class names, "
                         f"got {len(names)}")
    return names


def _input_spec(input_shape: Any, scale: float, mean: Any, std: Any) -> InputSpec:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) != 3 \
            or not all(_is_int(d) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape: expected (height, width, channels) of positive ints, got {input_shape!r}")
    return InputSpec(*input_shape, scale=scale, mean=mean, std=std)


def _abstract(fn: Callable, argument: str, spec: InputSpec, variables: Any) -> Any:
    """``jax.eval_shape(fn, variables, x)`` on a (2, H, W, C) ``x``; the user's errors as one-line ValueErrors."""
    try:
        return jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((_BATCH, *spec.shape), spec.dtype))
    except Exception as error:  # noqa: BLE001 - whatever the user's model raises
        raise ValueError(f"{argument}: running it on a {'x'.join(map(str, spec.shape))} input failed with "
                         f"{_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"


def _record(found: dict, path: tuple, kind: str, out: Any) -> None:
    """Keep the first output of each submodule when it is one array with the batch axis."""
    if path not in found:
        batched = isinstance(out, jax.Array) and out.ndim >= 1 and out.shape[0] == _BATCH
        found[path] = (kind, jax.ShapeDtypeStruct(out.shape, out.dtype)) if batched else None


def _module_network(apply: Callable, variables: Any, found: dict, paths: dict, layers: Any, spec: InputSpec,
                    class_names: Any, output: Any, prefixes: tuple[Path, ...], name: str) -> Network:
    """The ``Network`` of a linen or nnx module from its discovered layers; ``prefixes``: collections."""
    if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence) or not layers or
                               len(set(layers)) != len(layers) or any(n not in paths for n in layers)):
        raise ValueError(f"layers: expected distinct names from {', '.join(paths)}; got {layers!r}")
    names = tuple(layers or paths)
    kernels = {}
    for n in names:
        kernel = next((p for p in ((*c, *paths[n], "kernel") for c in prefixes)
                       if getattr(_array(_find(variables, p)), "ndim", 0) in (2, 4)), None)
        if kernel:
            kernels[n] = kernel
    param_paths = {n: tuple(p for p in ((*c, *paths[n]) for c in prefixes) if _find(variables, p) is not None)
                   for n in names}
    net = Network(apply, variables, names, spec, _check_classes(class_names, tuple(getattr(output, "shape", "N?")[1:]),
                                                                "the model output"),
                  kernels, param_paths, {n: found[paths[n]][0] for n in names}, name)
    for n in names:
        net._cache[("shape", n)] = found[paths[n]][1].shape[1:]
    return net


def from_cnn(model: Any, variables: Any, class_names: Sequence[str] | None = None) -> Network:
    """The built-in ``jaxviz.model.CNN`` on 32x32x3 pixels / 255; ``forward`` stops at the layer.

    A conv layer's count includes its ``_bn`` params and batch stats, as in ``jaxviz.model.summary``.
    """
    from jaxviz import model as cnn

    if not isinstance(model, cnn.CNN):
        raise TypeError(f"model: expected a jaxviz.model.CNN, got {type(model).__name__}")
    try:
        rows = cnn.summary(model, variables)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"variables: expected the CNN's {{'params', 'batch_stats'}}, they failed with "
                         f"{_one_line(error)}") from error

    def apply(variables, x, layer):
        return cnn.forward(model, variables, x, layer=layer)

    names = model.layer_names()
    paths = {n: (("params", n), ("params", f"{n}_bn"), ("batch_stats", f"{n}_bn")) for n in names}
    net = Network(apply, variables, names, InputSpec(*cnn.IMAGE_SHAPE),
                  _check_classes(class_names, rows[-1].output_shape, f"layer {names[-1]!r}"),
                  {n: ("params", n, "kernel") for n in names if _find(variables, ("params", n, "kernel")) is not None},
                  {n: tuple(p for p in ps if _find(variables, p) is not None) for n, ps in paths.items()},
                  {r.name: r.kind for r in rows}, "CNN")
    net._cache.update({("shape", r.name): r.output_shape for r in rows})
    return net


def from_linen(module: Any, variables: Any, *, input_shape: Sequence[int], class_names: Sequence[str] | None = None,
               scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               apply_kwargs: Mapping[str, Any] | None = None, layers: Sequence[str] | None = None) -> Network:
    """Any ``flax.linen.Module``, unmodified.

    The layers are found by one abstract forward under ``nn.intercept_methods``;
    the top-level output is no layer of its own (usually it is the last
    layer's). ``apply`` runs ``module.apply`` with ``capture_intermediates``
    keeping only the first ``__call__`` of the layer's path.

    Args:
      module, variables: the module and its ``{"params": ..., "batch_stats": ...}``.
      input_shape: (H, W, C) of one input image.
      class_names: names of the model output's (N, classes).
      scale, mean, std: see ``InputSpec``.
      apply_kwargs: passed to every ``module.apply`` (e.g. ``{"train": False}``).
      layers: expose only these layers, in this order.
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a flax.linen.Module, got {type(module).__name__}")
    if apply_kwargs is not None and not isinstance(apply_kwargs, Mapping):
        raise TypeError(f"apply_kwargs: expected a mapping of keyword arguments, got {type(apply_kwargs).__name__}")
    kwargs = dict(apply_kwargs or {})
    if clash := sorted({"mutable", "capture_intermediates", "method"} & set(kwargs)):
        raise ValueError(f"apply_kwargs: expected no {clash} (jaxviz sets them), got {kwargs}")
    spec, found = _input_spec(input_shape, scale, mean, std), {}

    def record(next_fun, args, kw, context):
        out = next_fun(*args, **kw)
        if context.method_name == "__call__" and context.module.path:
            _record(found, tuple(context.module.path), type(context.module).__name__, out)
        return out

    def run(variables, x):
        with nn.intercept_methods(record):
            return module.apply(variables, x, **kwargs)

    output = _abstract(run, "module", spec, variables)
    paths = {"/".join(p): p for p, v in found.items() if v is not None}
    if not paths:
        raise ValueError("module: expected submodules whose __call__ returns one (N, ...) array, found none")

    def apply(variables, x, layer):
        path = paths[layer]
        _, state = module.apply(variables, x, mutable=["intermediates"], **kwargs,
                                capture_intermediates=lambda m, method: method == "__call__" and m.path == path)
        return _find(state["intermediates"], path)["__call__"][0]

    collections = sorted(variables, key=lambda c: c != "params") if isinstance(variables, Mapping) else ()
    return _module_network(apply, variables, found, paths, layers, spec, class_names, output,
                           tuple((c,) for c in collections), type(module).__name__)


class _Tap:
    """Stands in for a submodule of a throwaway nnx copy: calls it, records its first output."""

    def __init__(self, inner: Any, path: tuple, sink: list):
        self.__dict__.update(_tap_inner=inner, _tap_path=path, _tap_sink=sink)

    def __call__(self, *args, **kwargs):
        out = self._tap_inner(*args, **kwargs)
        self._tap_sink.append((self._tap_path, out))
        return out

    def __getattr__(self, name):  # the parent may read the submodule's attributes
        return getattr(self.__dict__["_tap_inner"], name)


def _tap(root: Any, path: tuple, sink: list) -> bool:
    """Replace the submodule at ``path`` of ``root`` by a ``_Tap``; ``False`` if it sits in a tuple."""
    from flax import nnx

    def get(node, key):
        node = getattr(node, key) if isinstance(node, nnx.Module) and isinstance(key, str) else node[key]
        return node._tap_inner if isinstance(node, _Tap) else node

    parent = root
    for key in path[:-1]:
        parent = get(parent, key)
    tap = _Tap(get(parent, path[-1]), path, sink)
    if isinstance(parent, nnx.Module) and isinstance(path[-1], str):
        object.__setattr__(parent, path[-1], tap)  # skip nnx's attribute checks: the copy is thrown away
    elif isinstance(parent, tuple):
        return False
    else:
        parent[path[-1]] = tap
    return True


def from_nnx(module: Any, *, input_shape: Sequence[int], class_names: Sequence[str] | None = None,
             scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             layers: Sequence[str] | None = None) -> Network:
    """Any ``flax.nnx.Module``, analysed in eval mode without touching the user's module.

    ``variables`` is the ``nnx.State`` of a copy put in eval mode
    (``Module.eval()``: BatchNorm uses its running statistics, Dropout is
    off). ``apply(state, x, layer)`` merges a fresh module from it, replaces
    the layer's submodule in that copy by a tap recording the output of its
    first ``__call__``, calls the model and returns the record. The layers
    are the called submodules (those held in tuples are skipped).

    Args:
      module: the module.
      input_shape: (H, W, C) of one input image.
      class_names: names of the model output's (N, classes).
      scale, mean, std: see ``InputSpec``.
      layers: expose only these layers, in this order.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"module: expected a flax.nnx.Module, got {type(module).__name__}")
    spec, found = _input_spec(input_shape, scale, mean, std), {}
    copy = nnx.merge(*nnx.split(module))
    copy.eval()
    graphdef, state = nnx.split(copy)

    def run(state, x):
        model, sink = nnx.merge(graphdef, state), []
        kinds = {p: type(m).__name__ for p, m in list(nnx.iter_modules(model)) if p and callable(m) and
                 _tap(model, p, sink)}
        out = model(x)
        for path, value in sink:
            _record(found, path, kinds[path], value)
        return out

    output = _abstract(run, "module", spec, state)
    paths = {"/".join(map(str, p)): p for p, v in found.items() if v is not None}
    if not paths:
        raise ValueError("module: expected submodules whose __call__ returns one (N, ...) array, found none")

    def apply(state, x, layer):
        model, sink = nnx.merge(graphdef, state), []
        _tap(model, paths[layer], sink)
        model(x)
        return sink[0][1]

    return _module_network(apply, state, found, paths, layers, spec, class_names, output, ((),),
                           type(module).__name__)


def from_function(apply: Callable[[Any, jax.Array, str], jax.Array], variables: Any, *, layer_names: Sequence[str],
                  input_shape: Sequence[int], class_names: Sequence[str] | None = None, scale: float = 1 / 255,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  kernel_paths: Mapping[str, Path] | None = None) -> Network:
    """Anything else (Equinox, Haiku, plain JAX): a pure ``apply(variables, x, layer) -> (N, ...)``.

    Each layer is run once abstractly (``jax.eval_shape``) to check it.

    Args:
      apply: the activations of ``layer`` (one of ``layer_names``) for float ``x`` (N, H, W, C).
      variables: the pytree ``apply`` takes.
      layer_names: every layer, in forward order.
      input_shape: (H, W, C) of one input image.
      class_names: names of the last layer's (N, classes).
      scale, mean, std: see ``InputSpec``.
      kernel_paths: layer -> keys of its kernel in ``variables``.
    """
    if not callable(apply):
        raise TypeError(f"apply: expected a callable apply(variables, x, layer), got {type(apply).__name__}")
    if kernel_paths is not None and not isinstance(kernel_paths, Mapping):
        raise TypeError(f"kernel_paths: expected a mapping layer -> keys, got {type(kernel_paths).__name__}")
    spec, names, shapes = _input_spec(input_shape, scale, mean, std), _layer_names(layer_names), {}
    for layer in names:
        out = _abstract(lambda v, x, layer=layer: apply(v, x, layer), "apply", spec, variables)
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.ndim >= 1 and out.shape[0] == _BATCH):
            raise ValueError(f"apply: expected (N, ...) activations for layer {layer!r}, got "
                             f"{getattr(out, 'shape', type(out).__name__)} for N={_BATCH}")
        shapes[("shape", layer)] = out.shape[1:]
    net = Network(apply, variables, names, spec, _check_classes(class_names, out.shape[1:], f"layer {names[-1]!r}"),
                  {k: tuple(v) for k, v in (kernel_paths or {}).items()}, name=getattr(apply, "__name__", ""))
    net._cache.update(shapes)
    return net
