"""Progress bars: tqdm when it is installed, a silent stand-in otherwise."""

from __future__ import annotations

import os
import sys


class _NoBar:
    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(*, total: int | None = None, desc: str = "", disable: bool = False, **kwargs):
    """A tqdm bar on stderr; disabled by ``disable`` or ``JAXVIZ_PROGRESS=0``."""
    if disable or os.environ.get("JAXVIZ_PROGRESS", "1") == "0":
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a declared dependency, but numerics must not need it
        return _NoBar()
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
