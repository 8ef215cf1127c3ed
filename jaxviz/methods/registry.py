"""The registry: every attribution method, by name. The one list every caller reads.

The command line's ``--method`` choices and options, ``compare_methods``,
``randomization_test``, ``run_dataset`` and the report take their methods from
here. To add a method to jaxviz: write its module (its function, options dataclass
and ``Method`` record; see ``jaxviz.methods.base``), add it below, and add a row
to ``tests/test_methods_contract.py``. To try one of your own without editing
jaxviz, ``register`` its record: ``attribute``, ``compare_methods`` and, when the
record has the hooks, ``randomization_test`` and ``run_dataset`` take its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from jaxviz.checks import ArgumentError, ArgumentTypeError
from jaxviz.methods import ablation, gradcam, gradients, occlusion, rise
from jaxviz.methods.base import KINDS, Method, options_fields

__all__ = ["METHODS", "get", "labels", "method_options", "names", "register", "resolve"]

# in the order the figures and tables show them: perturbation, gradient, CAM
METHODS: dict[str, Method] = {m.name: m for m in (
    occlusion.METHOD,
    rise.METHOD,
    ablation.METHOD,
    *gradients.METHODS,
    gradcam.METHOD,
)}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (after the built-in ones) and return it.

    Its record is checked as the contract test checks the built-in ones: a ``Method`` whose name is a new
    lowercase identifier (``replace=True`` replaces a method of that name), a kind of ``KINDS``, and an
    options dataclass whose every field has a default and help text (``jaxviz.methods.base.option``).
    """
    if not isinstance(method, Method):
        raise ArgumentTypeError("method", f"expected a jaxviz.methods.base.Method, got {type(method).__name__}")
    name = method.name
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ArgumentError("method", f"expected a lowercase identifier as the name, got {name!r}")
    if name in METHODS and not replace:
        raise ArgumentError("method", f"expected a new name, got {name!r}, already registered (replace=True "
                                      "replaces it)")
    if method.kind not in KINDS:
        raise ArgumentError("method", f"expected a kind of {', '.join(KINDS)}, got {method.kind!r}")
    if not dataclasses.is_dataclass(method.options) or not isinstance(method.options, type):
        raise ArgumentTypeError("method", f"expected an options dataclass, got {method.options!r}")
    for field in dataclasses.fields(method.options):
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ArgumentError("method", f"expected a default for every option, got none for {field.name!r}")
        if not field.metadata.get("help"):
            raise ArgumentError("method", f"expected help text for every option (jaxviz.methods.base.option), "
                                          f"got none for {field.name!r}")
    for hook in ("run", "check", "describe", "problem"):
        if not callable(getattr(method, hook)):
            raise ArgumentTypeError("method", f"expected a callable {hook}, got {getattr(method, hook)!r}")
    METHODS[name] = method
    return method


def names(*, run: bool = False, sanity: bool = False) -> tuple[str, ...]:
    """The registered names; ``run``: only those a dataset run can stream (``Method.run_family``); ``sanity``:
    only those the randomization sanity check can run (``Method.randomized_maps``)."""
    return tuple(n for n, m in METHODS.items()
                 if (not run or m.run_family is not None) and (not sanity or m.randomized_maps is not None))


def labels() -> dict[str, str]:
    """name -> display name."""
    return {n: m.label for n, m in METHODS.items()}


def get(name: str, *, argument: str = "method", run: bool = False, sanity: bool = False) -> Method:
    """The method called ``name``; an ``ArgumentError`` naming ``argument`` lists the names that fit."""
    known = names(run=run, sanity=sanity)
    if not isinstance(name, str) or name not in known:
        raise ArgumentError(argument, f"expected one of {', '.join(known)}, got {name!r}")
    return METHODS[name]


def resolve(methods: Sequence[str], *, argument: str = "methods", run: bool = False,
            sanity: bool = False, empty: bool = False, optional: bool = False) -> tuple[Method, ...]:
    """Distinct registered names (in the order given) as their methods; ``empty``: none is allowed;
    ``optional``: the caller also takes None (the message says so)."""
    known = names(run=run, sanity=sanity)
    want = (f"{'None or ' if optional else ''}a {'' if empty else 'non-empty '}tuple of distinct names from "
            f"{', '.join(known)}")
    if isinstance(methods, str) or not isinstance(methods, (tuple, list)) or not all(
            isinstance(m, str) for m in methods):
        raise ArgumentTypeError(argument, f"expected {want}, got {methods!r}")
    if (not methods and not empty) or len(set(methods)) < len(methods) or any(m not in known for m in methods):
        raise ArgumentError(argument, f"expected {want}, got {tuple(methods)!r}")
    return tuple(METHODS[m] for m in methods)


def method_options(methods: Sequence[Method], values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Each method's options dataclass from one mapping of option names to values (an option several methods
    share, such as ``seed`` or ``fill``, goes to each of them; one the given methods lack is left to the others);
    a name no registered method has is refused."""
    values = dict(values or {})
    every = {name for m in METHODS.values() for name in options_fields(m.options)}
    unknown = [k for k in values if k not in every]
    if unknown:
        raise ArgumentError(unknown[0], f"not an option of any method (the options: {', '.join(sorted(every))})")
    return {m.name: m.options_for(values) for m in methods}
