"""Tolerances for float32 results computed by different programs.

Two float32 programs that compute the same sums with different batch shapes,
chunkings, fusions or devices may add in a different order, and CPUs with and
without AVX-512 (or ARM) pick different kernels. The difference is then
reassociation error: a few units in the last place of the *largest* terms of
the sum, whatever the size of the result. So a comparison tolerance is an
absolute error relative to the scale of the values (``max |scale|``), never a
per-element relative one (useless near zero) and never bitwise. Only the same
program run on the same inputs may be compared exactly.
"""

from __future__ import annotations

import numpy as np

# float32 eps is 1.2e-7; sums of a few thousand terms reassociated differ by a few
# hundred eps of the largest term in the worst case, far less in practice.
REL = 1e-5


def max_rel_error(got, want, *, scale=None) -> float:
    """``max |got - want| / max |scale|`` (``scale`` defaults to ``want``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shapes differ: {got.shape} vs {want.shape}")
    ref = np.abs(np.asarray(want if scale is None else scale, np.float64)).max(initial=0.0)
    err = np.abs(got - want).max(initial=0.0)
    return float(err / ref) if ref > 0 else float(err)


def assert_close(got, want, *, scale=None, rel: float = REL, err_msg: str = "") -> None:
    """Assert ``|got - want| <= rel * max|scale|`` elementwise.

    Args:
      got, want: arrays of one shape.
      scale: the values the compared ones were computed from when those are
        differences of larger numbers (e.g. an occlusion grid ``base - f(occluded)``
        is compared at the scale of ``base``); default ``want``.
      rel: tolerance relative to the scale; the default suits float32 sums of
        up to a few thousand terms.
    """
    error = max_rel_error(got, want, scale=scale)
    if not error <= rel:
        raise AssertionError(f"max |got - want| / max |scale| = {error:.3g} > {rel:g}. {err_msg}")
