"""Benchmarks of jaxviz against naive loops and peers; results in ``benchmarks/results/``.

The naive loops and the PyTorch port they time are the tests' reference implementations
(``tests/references.py``, ``tests/torch_port.py``): one copy, checked by the tests, timed here.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
