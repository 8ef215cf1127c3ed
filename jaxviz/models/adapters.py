"""Adapters: any model as a ``jaxviz.Network``, with no glue code.

* ``from_cnn``: the built-in CIFAR-10 ``CNN`` (``forward`` truly stops at the layer);
* ``from_linen``: any ``flax.linen.Module`` with its variables; layers are the
  submodule paths joined with "/", captured with ``capture_intermediates``;
* ``from_nnx``: any ``flax.nnx.Module``; layers are attribute paths joined with "/";
* ``from_function``: a pure ``apply(variables, x, layer)`` and its layer names,
  for anything else (Equinox, Haiku, hand-written JAX).

Linen and nnx layers are listed in the order their ``__call__`` returns (a
block follows its sublayers); a layer's activations are the output of its
first call. Their ``apply`` traces the whole model and returns one output:
the later layers are dead code that XLA drops under ``jax.jit``, which is
how ``Network.layer_fn`` and ``Network.uint8_fn`` are run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.models import cnn
from jaxviz.models.network import (
    _BATCH,
    InputSpec,
    Network,
    Path,
    _array,
    _class_names,
    _find,
    _is_int,
    _layer_names,
)

__all__ = ["from_cnn", "from_function", "from_linen", "from_nnx"]


def _check_classes(names: Any, shape: tuple[int, ...], what: str) -> tuple[str, ...] | None:
    """``class_names`` checked against ``what``'s output shape (without the batch axis)."""
    if names is None:
        return None
    names = _class_names(names)
    if len(shape) != 1:
        raise ArgumentError("class_names", f"given, so {what} must have shape (N, classes); it has (N, "
                         f"{', '.join(map(str, shape))})")
    if shape[0] != len(names):
        raise ArgumentError("class_names", f"{what} has {shape[0]} outputs, so expected {shape[0]} class names, "
                         f"got {len(names)}")
    return names


def _input_spec(input_shape: Any, scale: float, mean: Any, std: Any) -> InputSpec:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) != 3 \
            or not all(_is_int(d) and d > 0 for d in input_shape):
        raise ArgumentError("input_shape", f"expected (height, width, channels) of positive ints, got {input_shape!r}")
    return InputSpec(*input_shape, scale=scale, mean=mean, std=std)


def _abstract(fn: Callable, argument: str, spec: InputSpec, variables: Any) -> Any:
    """``jax.eval_shape(fn, variables, x)`` on a (2, H, W, C) ``x``; the user's errors as one-line ValueErrors."""
    try:
        return jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((_BATCH, *spec.shape), spec.dtype))
    except Exception as error:  # noqa: BLE001 - whatever the user's model raises
        raise ArgumentError(f"{argument}", f"running it on a {'x'.join(map(str, spec.shape))} input failed with "
                         f"{_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"


def _describe(output: Any) -> str:
    """A model output that is not one array, in words: its type and the shapes in it."""
    leaves = jax.tree_util.tree_leaves_with_path(output)
    shapes = ", ".join(f"{jax.tree_util.keystr(path)}: {tuple(getattr(leaf, 'shape', ()))}" for path, leaf in leaves[:6])
    return f"a {type(output).__name__} of {len(leaves)} arrays ({shapes}{', ...' if len(leaves) > 6 else ''})"


def _record(found: dict, path: tuple, kind: str, out: Any) -> None:
    """Keep the first output of each submodule when it is one array with the batch axis."""
    if path not in found:
        batched = isinstance(out, jax.Array) and out.ndim >= 1 and out.shape[0] == _BATCH
        found[path] = (kind, jax.ShapeDtypeStruct(out.shape, out.dtype)) if batched else None


def _module_network(apply: Callable, variables: Any, found: dict, paths: dict, layers: Any, spec: InputSpec,
                    class_names: Any, output: Any, prefixes: tuple[Path, ...], name: str,
                    apply_perturbed: Callable, init: Callable | None) -> Network:
    """The ``Network`` of a linen or nnx module from its discovered layers; ``prefixes``: collections."""
    if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence) or not layers or
                               len(set(layers)) != len(layers) or any(n not in paths for n in layers)):
        raise ArgumentError("layers", f"expected distinct names from {', '.join(paths)}; got {layers!r}")
    names = tuple(layers or paths)
    kernels = {}
    for n in names:
        kernel = next((p for p in ((*c, *paths[n], "kernel") for c in prefixes)
                       if getattr(_array(_find(variables, p)), "ndim", 0) in (2, 4)), None)
        if kernel:
            kernels[n] = kernel
    param_paths = {n: tuple(p for p in ((*c, *paths[n]) for c in prefixes) if _find(variables, p) is not None)
                   for n in names}
    if class_names is not None and not isinstance(output, jax.ShapeDtypeStruct):
        raise ArgumentError("class_names", f"given, so the model output must be one (N, classes) array; it returns "
                         f"{_describe(output)}, which is not supported: wrap the module so that it returns the "
                         f"one output to explain (e.g. the logits)")
    net = Network(apply, variables, names, spec, _check_classes(class_names, tuple(getattr(output, "shape", ())[1:]),
                                                                "the model output"),
                  kernels, param_paths, {n: found[paths[n]][0] for n in names}, name, apply_perturbed, init)
    return net.with_output_shapes({n: found[paths[n]][1].shape[1:] for n in names})


def from_cnn(model: Any, variables: Any, class_names: Sequence[str] | None = None) -> Network:
    """The built-in ``jaxviz.CNN`` on 32x32x3 pixels / 255; ``forward`` stops at the layer.

    A conv layer's count includes its ``_bn`` params and batch stats, as ``jaxviz.models.cnn.layers`` counts them.
    """
    if not isinstance(model, cnn.CNN):
        raise ArgumentTypeError("model", f"expected a jaxviz.CNN, got {type(model).__name__}")
    try:
        rows = cnn.layers(model, variables)
    except Exception as error:  # noqa: BLE001
        raise ArgumentError("variables", f"expected the CNN's {{'params', 'batch_stats'}}, they failed with "
                         f"{_one_line(error)}") from error

    def apply(variables, x, layer):
        return cnn.forward(model, variables, x, layer=layer)

    def apply_perturbed(variables, x, layer, delta, output_layer):
        return cnn.forward_perturbed(model, variables, x, layer, delta, output_layer)

    def init(key):
        return cnn.init_variables(model, key)

    names = model.layer_names()
    paths = {n: (("params", n), ("params", f"{n}_bn"), ("batch_stats", f"{n}_bn")) for n in names}
    net = Network(apply, variables, names, InputSpec(*cnn.IMAGE_SHAPE),
                  _check_classes(class_names, rows[-1].output_shape, f"layer {names[-1]!r}"),
                  {n: ("params", n, "kernel") for n in names if _find(variables, ("params", n, "kernel")) is not None},
                  {n: tuple(p for p in ps if _find(variables, p) is not None) for n, ps in paths.items()},
                  {r.name: r.kind for r in rows}, "CNN", apply_perturbed, init)
    return net.with_output_shapes({r.name: r.output_shape for r in rows})


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
        raise ArgumentTypeError("module", f"expected a flax.linen.Module, got {type(module).__name__}")
    if apply_kwargs is not None and not isinstance(apply_kwargs, Mapping):
        raise ArgumentTypeError("apply_kwargs", f"expected a mapping of keyword arguments, got {type(apply_kwargs).__name__}")
    kwargs = dict(apply_kwargs or {})
    if clash := sorted({"mutable", "capture_intermediates", "method"} & set(kwargs)):
        raise ArgumentError("apply_kwargs", f"expected no {clash} (jaxviz sets them), got {kwargs}")
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
        raise ArgumentError("module", "expected submodules whose __call__ returns one (N, ...) array, found none")

    def apply(variables, x, layer):
        path = paths[layer]
        _, state = module.apply(variables, x, mutable=["intermediates"], **kwargs,
                                capture_intermediates=lambda m, method: method == "__call__" and m.path == path)
        return _find(state["intermediates"], path)["__call__"][0]

    def apply_perturbed(variables, x, layer, delta, output_layer):
        target, out_path, seen = paths[layer], paths[output_layer], {}

        def perturb(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            if context.method_name == "__call__":
                path = tuple(context.module.path)
                if path == target and "layer" not in seen:
                    seen["layer"], out = out, out + delta
                elif path == out_path and "output" not in seen:
                    seen["output"] = out
            return out

        with nn.intercept_methods(perturb):
            module.apply(variables, x, **kwargs)
        return seen["layer"], seen["output"]

    def init(key):
        import jax.numpy as jnp

        return module.init({"params": key, "dropout": key}, jnp.zeros((1, *spec.shape), spec.dtype), **kwargs)

    collections = sorted(variables, key=lambda c: c != "params") if isinstance(variables, Mapping) else ()
    return _module_network(apply, variables, found, paths, layers, spec, class_names, output,
                           tuple((c,) for c in collections), type(module).__name__, apply_perturbed, init)


class _Tap:
    """Stands in for a submodule of a throwaway nnx copy: calls it, records its first output."""

    def __init__(self, inner: Any, path: tuple, sink: list, add: Any = None):
        self.__dict__.update(_tap_inner=inner, _tap_path=path, _tap_sink=sink, _tap_add=add)

    def __call__(self, *args, **kwargs):
        out = self._tap_inner(*args, **kwargs)
        first = all(path != self._tap_path for path, _ in self._tap_sink)
        self._tap_sink.append((self._tap_path, out))
        return out + self._tap_add if first and self._tap_add is not None else out

    def __getattr__(self, name):  # the parent may read the submodule's attributes
        return getattr(self.__dict__["_tap_inner"], name)


def _tap(root: Any, path: tuple, sink: list, add: Any = None) -> bool:
    """Replace the submodule at ``path`` of ``root`` by a ``_Tap`` (adding ``add`` to its first output);
    ``False`` if it sits in a tuple."""
    from flax import nnx

    def get(node, key):
        node = getattr(node, key) if isinstance(node, nnx.Module) and isinstance(key, str) else node[key]
        return node._tap_inner if isinstance(node, _Tap) else node

    parent = root
    for key in path[:-1]:
        parent = get(parent, key)
    tap = _Tap(get(parent, path[-1]), path, sink, add)
    if isinstance(parent, nnx.Module) and isinstance(path[-1], str):
        object.__setattr__(parent, path[-1], tap)  # skip nnx's attribute checks: the copy is thrown away
    elif isinstance(parent, tuple):
        return False
    else:
        parent[path[-1]] = tap
    return True


def from_nnx(module: Any, *, input_shape: Sequence[int], class_names: Sequence[str] | None = None,
             scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             layers: Sequence[str] | None = None, init: Callable[[jax.Array], Any] | None = None) -> Network:
    """Any ``flax.nnx.Module``, analysed in eval mode without touching the user's module.

    ``variables`` is the ``nnx.State`` of a copy put in eval mode
    (``Module.eval()``: BatchNorm uses its running statistics, Dropout is
    off), without its RNG state (the keys and counters of ``nnx.Rngs`` and
    of ``nnx.Dropout(rate, rngs=rngs)``): eval mode draws no random numbers,
    so that state stays in the program as a constant, and analyses that
    perturb or randomize the variables never see it. ``apply(state, x, layer)`` merges a fresh module from it, replaces
    the layer's submodule in that copy by a tap recording the output of its
    first ``__call__``, calls the model and returns the record. The layers
    are the called submodules (those held in tuples are skipped).

    Args:
      module: the module.
      input_shape: (H, W, C) of one input image.
      class_names: names of the model output's (N, classes).
      scale, mean, std: see ``InputSpec``.
      layers: expose only these layers, in this order.
      init: optional ``init(key) -> a fresh module`` of the same structure (e.g.
        ``lambda key: MyNet(rngs=nnx.Rngs(key))``): the model's own initializers, for
        the randomization sanity check (without it, that check draws scale-matched
        Gaussians).
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise ArgumentTypeError("module", f"expected a flax.nnx.Module, got {type(module).__name__}")
    if init is not None and not callable(init):
        raise ArgumentTypeError("init", f"expected a callable init(key) -> module, got {type(init).__name__}")
    spec, found = _input_spec(input_shape, scale, mean, std), {}
    copy = nnx.merge(*nnx.split(module))
    copy.eval()
    graphdef, rng_state, state = nnx.split(copy, nnx.RngState, ...)  # RNG streams: constants, not variables

    def run(state, x):
        model, sink = nnx.merge(graphdef, rng_state, state), []
        kinds = {p: type(m).__name__ for p, m in list(nnx.iter_modules(model)) if p and callable(m) and
                 _tap(model, p, sink)}
        out = model(x)
        for path, value in sink:
            _record(found, path, kinds[path], value)
        return out

    output = _abstract(run, "module", spec, state)
    paths = {"/".join(map(str, p)): p for p, v in found.items() if v is not None}
    if not paths:
        raise ArgumentError("module", "expected submodules whose __call__ returns one (N, ...) array, found none")

    def apply(state, x, layer):
        model, sink = nnx.merge(graphdef, rng_state, state), []
        _tap(model, paths[layer], sink)
        model(x)
        return sink[0][1]

    def apply_perturbed(state, x, layer, delta, output_layer):
        model, sink = nnx.merge(graphdef, rng_state, state), []
        _tap(model, paths[layer], sink, delta)
        _tap(model, paths[output_layer], sink)
        model(x)
        first: dict = {}
        for path, value in sink:
            first.setdefault(path, value)
        return first[paths[layer]], first[paths[output_layer]]

    def fresh_state(key):
        fresh = init(key)
        if not isinstance(fresh, nnx.Module):
            raise ArgumentTypeError("init", f"expected init(key) to return an nnx.Module, got {type(fresh).__name__}")
        fresh = nnx.merge(*nnx.split(fresh))
        fresh.eval()
        return nnx.split(fresh, nnx.RngState, ...)[2]

    return _module_network(apply, state, found, paths, layers, spec, class_names, output, ((),),
                           type(module).__name__, apply_perturbed, None if init is None else fresh_state)


def from_function(apply: Callable[[Any, jax.Array, str], jax.Array], variables: Any, *, layer_names: Sequence[str],
                  input_shape: Sequence[int], class_names: Sequence[str] | None = None, scale: float = 1 / 255,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  kernel_paths: Mapping[str, Path] | None = None, apply_perturbed: Callable | None = None,
                  init: Callable[[jax.Array], Any] | None = None) -> Network:
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
      apply_perturbed: optional ``(variables, x, layer, delta, output_layer) -> (activations
        of layer, activations of output_layer)`` with ``delta`` added to ``layer`` (for Grad-CAM).
      init: optional ``init(key) -> variables`` from the model's initializers (for the
        randomization sanity check).
    """
    if not callable(apply):
        raise ArgumentTypeError("apply", f"expected a callable apply(variables, x, layer), got {type(apply).__name__}")
    if kernel_paths is not None and not isinstance(kernel_paths, Mapping):
        raise ArgumentTypeError("kernel_paths", f"expected a mapping layer -> keys, got {type(kernel_paths).__name__}")
    spec, names, shapes = _input_spec(input_shape, scale, mean, std), _layer_names(layer_names), {}
    for layer in names:
        out = _abstract(lambda v, x, layer=layer: apply(v, x, layer), "apply", spec, variables)
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.ndim >= 1 and out.shape[0] == _BATCH):
            raise ArgumentError("apply", f"expected (N, ...) activations for layer {layer!r}, got "
                             f"{getattr(out, 'shape', type(out).__name__)} for N={_BATCH}")
        shapes[layer] = out.shape[1:]
    net = Network(apply, variables, names, spec, _check_classes(class_names, out.shape[1:], f"layer {names[-1]!r}"),
                  {k: tuple(v) for k, v in (kernel_paths or {}).items()}, name=getattr(apply, "__name__", ""),
                  apply_perturbed=apply_perturbed, init=init)
    return net.with_output_shapes(shapes)
