"""Load a user's model for the command line: ``--model FILE_OR_MODULE:ATTR [--weights FILE]``.

``FILE_OR_MODULE`` is a path to a ``.py`` file or a dotted module path;
``ATTR`` names a zero-argument callable in it that returns one of:

* a ``jaxviz.Network`` (any adapter, full control);
* ``(module, variables)`` for a ``flax.linen.Module``;
* a ``flax.nnx.Module`` (its state inside);
* ``(apply, variables, layer_names)`` for a plain ``apply(variables, x, layer)``.

For the last three, the file (module) says what the input is with
module-level constants: ``INPUT_SHAPE = (H, W, C)`` (else ``input_shape=`` /
``--input-shape``, else the size of the data's images), and optional
``CLASS_NAMES``, ``INPUT_SCALE`` (default 1/255), ``INPUT_MEAN``,
``INPUT_STD`` (per channel, after scaling) and, for linen, ``APPLY_KWARGS``
(e.g. ``{"train": False}``).

``--weights FILE`` replaces the variables by a Flax msgpack state dict
(``flax.serialization.to_bytes(variables)`` for linen or a plain function,
``flax.serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(module)))``
for nnx) whose tree must match the model's.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import flax.serialization
import numpy as np

from jaxviz.checks import ArgumentError, ArgumentTypeError, PathNotFoundError
from jaxviz.models.adapters import _one_line, from_function, from_linen, from_nnx
from jaxviz.models.network import Network

__all__ = ["load_model", "load_variables"]

RETURNS = ("a jaxviz.Network, (linen_module, variables), an nnx.Module, "
           "or (apply, variables, layer_names)")


def _import(source: str, option: str):
    """The module at ``source``: a .py file path, or a dotted module path."""
    path = Path(source)
    if source.endswith(".py") or os.sep in source or "/" in source:
        if not path.is_file():
            raise PathNotFoundError(f"{option}: no Python file at {source!r}")
        name = f"jaxviz_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclass-based modules (flax linen) look themselves up here
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # the file may import modules beside it
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - the user's file may raise anything
            sys.modules.pop(name, None)
            raise ArgumentError(f"{option}", f"importing {source!r} failed with {_one_line(error)}") from error
        finally:
            sys.path.remove(folder)
        return module
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as error:
        raise ArgumentError(f"{option}", f"no module {source!r} ({error}); give a .py file path or an importable "
                         "dotted module path") from error
    except Exception as error:  # noqa: BLE001
        raise ArgumentError(f"{option}", f"importing {source!r} failed with {_one_line(error)}") from error


# the module-level constants, by the adapter argument they become (to name them in errors)
CONSTANTS = {"input_shape": "INPUT_SHAPE", "class_names": "CLASS_NAMES", "scale": "INPUT_SCALE", "mean": "INPUT_MEAN",
             "std": "INPUT_STD", "apply_kwargs": "APPLY_KWARGS"}


def _input_kwargs(module, source: str, option: str, input_shape: Any, default_input_shape: Any) -> dict:
    """The adapter's input arguments: ``input_shape`` (given), else INPUT_SHAPE, else the default."""
    shape = input_shape if input_shape is not None else getattr(module, "INPUT_SHAPE", None)
    if shape is None and default_input_shape is not None:
        shape = default_input_shape() if callable(default_input_shape) else default_input_shape
    if shape is None:
        raise ArgumentError(f"{option}", f"{source!r} defines no INPUT_SHAPE = (height, width, channels); define it, "
                         "or pass --input-shape H,W,C, so jaxviz knows the input size")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ArgumentError(f"{option}", f"INPUT_SHAPE: expected (height, width, channels) of positive ints, got {shape!r}")
    kwargs = {"input_shape": tuple(shape), "class_names": getattr(module, "CLASS_NAMES", None)}
    for const, key in (("INPUT_SCALE", "scale"), ("INPUT_MEAN", "mean"), ("INPUT_STD", "std")):
        if hasattr(module, const):
            kwargs[key] = getattr(module, const)
    return kwargs


def load_variables(path: str | os.PathLike, template: Any, *, option: str = "weights") -> Any:
    """Read a Flax msgpack state dict from ``path`` into the structure of ``template``.

    Args:
      path: the file.
      template: variables of the right tree and shapes (a pytree of arrays or
        a state dict).
      option: the argument name used in error messages.

    Returns:
      The template's tree with the file's arrays.

    Raises:
      FileNotFoundError; ValueError naming the first entry whose presence or shape differs.
    """
    path = Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"{option}: no weights file at {str(path)!r}")
    try:
        stored = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # noqa: BLE001 - msgpack raises several types on corrupt input
        raise ArgumentError(f"{option}", f"{str(path)!r} is not a Flax msgpack state dict ({_one_line(error)})") from None
    if isinstance(stored, dict) and stored.get("format") == "jaxviz-weights":
        raise ArgumentError(f"{option}", f"{str(path)!r} is a jaxviz weights file of the built-in CNN (from `jaxviz "
                         "train`); a model of your own takes a Flax msgpack state dict of its variables, e.g. "
                         "flax.serialization.to_bytes(variables)")
    stored = _str_keys(stored)  # msgpack keeps int keys (nnx lists); flax state dicts have str keys
    expected = flax.serialization.to_state_dict(template)
    _compare(expected, stored, "", option, path)
    return flax.serialization.from_state_dict(template, stored)


def _str_keys(tree: Any) -> Any:
    return {str(k): _str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _shape(x: Any) -> str:
    return "a group" if isinstance(x, dict) else f"shape {tuple(np.shape(x))}"


def _compare(expected: Any, got: Any, where: str, option: str, path: Path) -> None:
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            raise ArgumentError(f"{option}", f"{str(path)!r} has an array at {where or '/'}, the model a group there")
        for key in sorted(set(expected) | set(got), key=str):
            here = f"{where}/{key}"
            if key not in got:
                raise ArgumentError(f"{option}", f"{str(path)!r} lacks {here} (the model has {_shape(expected[key])} "
                                 "there): the file holds the variables of another model")
            if key not in expected:
                raise ArgumentError(f"{option}", f"{str(path)!r} has {here}, which the model does not have: the file "
                                 "holds the variables of another model")
            _compare(expected[key], got[key], here, option, path)
    elif isinstance(got, dict) or np.shape(got) != np.shape(expected):
        raise ArgumentError(f"{option}", f"{str(path)!r} has {_shape(got)} at {where}, the model expects "
                         f"{_shape(expected)}")


def load_model(spec: str, *, weights: str | os.PathLike | None = None, option: str = "--model",
               input_shape: Any = None, default_input_shape: Any = None) -> Network:
    """The ``Network`` named by ``FILE_OR_MODULE:ATTR`` (see the module docstring).

    ``input_shape`` (H, W, C) overrides the file's ``INPUT_SHAPE``; ``default_input_shape`` (or a
    zero-argument callable returning it, called only when needed: e.g. the data's image size)
    stands in when the file has none.

    Raises:
      ValueError / TypeError / FileNotFoundError naming ``option`` (or
      ``--weights``), what was expected and what was given.
    """
    from flax import linen, nnx

    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise ArgumentError(f"{option}", f"expected FILE_OR_MODULE:ATTR (e.g. my_resnet.py:build), got {spec!r}")
    source, attr = spec.rsplit(":", 1)
    module = _import(source, option)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ArgumentError(f"{option}", f"{source!r} has no callable {attr!r} "
                         f"(found {type(factory).__name__ if factory is not None else 'nothing'})")
    try:
        made = factory()
    except Exception as error:  # noqa: BLE001 - the user's code may raise anything
        raise ArgumentError(f"{option}", f"{attr}() raised {_one_line(error)}") from error
    if isinstance(made, Network):
        if input_shape is not None:
            raise ValueError("--input-shape: not supported when the model factory returns a jaxviz.Network "
                             "(it has its input size)")
        if weights is not None:
            raise ValueError("--weights: not supported when the model factory returns a jaxviz.Network; "
                             "load the weights inside the factory")
        return made
    if isinstance(made, nnx.Module):
        kwargs = _input_kwargs(module, source, option, input_shape, default_input_shape)
        if weights is not None:
            state = nnx.state(made)
            pure = load_variables(weights, nnx.to_pure_dict(state), option="--weights")
            nnx.replace_by_pure_dict(state, pure)
            nnx.update(made, state)
        return _adapt(from_nnx, (made,), kwargs, option)
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], linen.Module):
        kwargs = _input_kwargs(module, source, option, input_shape, default_input_shape)
        module_, variables = made
        if weights is not None:
            variables = load_variables(weights, variables, option="--weights")
        kwargs["apply_kwargs"] = getattr(module, "APPLY_KWARGS", None)
        return _adapt(from_linen, (module_, variables), kwargs, option)
    if isinstance(made, tuple) and len(made) == 3 and callable(made[0]):
        kwargs = _input_kwargs(module, source, option, input_shape, default_input_shape)
        apply, variables, layer_names = made
        if weights is not None:
            variables = load_variables(weights, variables, option="--weights")
        return _adapt(from_function, (apply, variables), {**kwargs, "layer_names": layer_names}, option)
    got = type(made).__name__ + (f" of {len(made)} items" if isinstance(made, tuple) else "")
    raise ArgumentTypeError(f"{option}", f"{attr}() must return {RETURNS}; got {got}")


def _adapt(adapter, args: tuple, kwargs: dict, option: str) -> Network:
    """``adapter(*args, **kwargs)``; its errors name ``option`` and the module constant they come from."""
    try:
        return adapter(*args, **kwargs)
    except (ValueError, TypeError) as error:
        name, sep, rest = str(error).partition(": ")
        raise type(error)(f"{option}: {CONSTANTS.get(name, name)}: {rest}" if sep else f"{option}: {error}") \
            from error
