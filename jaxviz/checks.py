"""The one home of argument checks: every user error is an ``ArgumentError`` that names its argument.

Every public function checks its input before any work and raises
``ArgumentError`` (a ``ValueError``) or ``ArgumentTypeError`` (also a
``TypeError``) whose text reads ``"argument: expected X, got Y"`` and whose
``argument`` attribute holds the name, so that a caller that calls the
argument otherwise (the command line's ``--n-steps`` for ``n_steps``) renames
it without parsing the text (``ArgumentError.renamed``).

The checks shared by several modules live here: integers in a range, seeds,
booleans, pairs, counts, and the engines' limit on (image, mask) pairs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["PAIR_LIMIT", "SEED_LIMIT", "ArgumentError", "ArgumentTypeError", "NamedArgumentError", "check_real",
           "NotADirectoryArgumentError", "PathExistsError", "PathNotFoundError", "check_bool", "check_choice",
           "check_int", "check_pair", "check_pair_count", "check_positive_count", "check_seed", "renamed_arguments"]

SEED_LIMIT = 2**32  # seeds are uint32: a larger one would wrap around to a smaller seed silently
PAIR_LIMIT = 2**31  # the engines index (image, mask) pairs with int32


class NamedArgumentError(Exception):
    """Base of every error that names its argument. ``argument``: its name (``"n_steps"``,
    ``"widths[1]"``, ``"--window"``); ``message``: what was expected and what was given;
    ``str(error)`` is ``"argument: message"``.

    ``Error("name: message")`` (one string) splits the name off the text, so that
    ``type(error)(text)`` rebuilds an error of the same kind.
    """

    def __init__(self, argument: str, message: str | None = None):
        if message is None:
            argument, _, message = argument.partition(": ")
        super().__init__(f"{argument}: {message}")
        self.argument, self.message = argument, message

    def renamed(self, argument: str) -> NamedArgumentError:
        """The same error naming ``argument`` instead (an index such as ``[1]`` is kept)."""
        index = self.argument[len(self.argument.partition("[")[0]):]
        return type(self)(argument + index, self.message)

    @property
    def base_name(self) -> str:
        """The argument without an index: ``widths`` for ``widths[1]``."""
        return self.argument.partition("[")[0]


class ArgumentError(NamedArgumentError, ValueError):
    """A bad argument (also a ``ValueError``)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class PathExistsError(NamedArgumentError, FileExistsError):
    """A path argument that names something that must not be replaced (also a ``FileExistsError``)."""


class PathNotFoundError(NamedArgumentError, FileNotFoundError):
    """A path argument that names nothing (also a ``FileNotFoundError``)."""


class NotADirectoryArgumentError(NamedArgumentError, NotADirectoryError):
    """A path argument that names a file where a directory is expected (also a ``NotADirectoryError``)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, low: int, high: int | None = None, what: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None); bools are refused.

    Raises:
      ArgumentTypeError: not an int; ArgumentError: out of range. Both name ``name``, the range (and ``what``).
    """
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if not _is_int(value):
        raise ArgumentTypeError(name, f"expected {expected}{what}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ArgumentError(name, f"expected {expected}{what}, got {value!r}")
    return int(value)


def check_real(value: Any, name: str, low: float, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = True) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (open or closed at each end; no upper
    bound when ``high`` is inf); bools are refused.

    Raises:
      ArgumentTypeError: not a real number; ArgumentError: NaN, infinite or out of the interval. Both name ``name``
      and the interval.
    """
    if high == math.inf:
        expected = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(name, f"expected {expected}, got {value!r} ({type(value).__name__})")
    x = float(value)
    if not (math.isfinite(x) and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)):
        raise ArgumentError(name, f"expected {expected}, got {x!r}")
    return x


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed in ``[0, 2**32)``: the one rule for every seed (a larger or negative one would wrap
    around silently to another seed's stream)."""
    return check_int(value, name, 0, SEED_LIMIT - 1)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; ``ArgumentTypeError`` naming ``name`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(name, f"expected True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Any) -> str:
    """``value`` if it is one of ``choices`` (strings), else ``ArgumentError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(name, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints ``(h, w)`` as a pair."""
    if _is_int(value):
        value = (int(value), int(value))
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ArgumentTypeError(name, f"expected an int or a pair of ints (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def check_positive_count(value: Any, name: str, what: str) -> int | None:
    """``None`` or a positive integer (an int, numpy int, or an integral float such as ``1e8``)."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if not _is_int(value):
        raise ArgumentTypeError(name, f"expected a positive number of {what} or None, got {value!r}")
    if value < 1:
        raise ArgumentError(name, f"expected a positive number of {what} or None, got {value!r}")
    return int(value)


def check_pair_count(images: int, count: int, name: str, what: str) -> None:
    """The engines number every (image, mask / sample) pair with an int32: ``images * count < 2**31``.
    ``name`` is the argument that sets ``count`` (``num_masks``, ``nt_samples``, ...), ``what`` its items."""
    if images * count >= PAIR_LIMIT:
        raise ArgumentError(name, f"expected images * {what} < 2**31 (the engine's int32 pair index), got "
                                  f"{images} * {count}")


@contextlib.contextmanager
def renamed_arguments(names: Mapping[str, str]) -> Iterator[None]:
    """Inside, a ``NamedArgumentError`` naming a key of ``names`` names its value instead (``{"n_steps":
    "ig_steps"}``, or the command line's ``{"n_steps": "--n-steps"}``): the one way an error is renamed."""
    try:
        yield
    except NamedArgumentError as e:
        if e.base_name not in names:
            raise
        raise e.renamed(names[e.base_name]) from None
