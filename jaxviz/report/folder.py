"""The report's output folder: checked before any work, written whole or not at all.

``write_folder(out_dir, write)`` calls ``write(tmp)`` on a temporary sibling
folder and swaps it in only when complete, under a lock, so ``out_dir``
always holds either the earlier complete report (or nothing) or the new
complete one, never a mix:

1. A lock: ``fcntl.flock`` on ``.<name>.lock`` beside ``out_dir``; a second
   writer fails at once with ``BlockingIOError`` naming the holder's pid. A
   killed holder's lock is released by the kernel. Temporary folders of
   writers that were killed (SIGKILL) are removed.
2. The report is written into ``.<name>.tmp-<pid>-<random>`` beside it.
3. Swap: if ``out_dir`` is absent, one ``os.rename``; if it holds an earlier
   report, an atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, elsewhere two
   renames (old to ``.<name>.old-<pid>-<random>``, new in; between them
   ``out_dir`` is briefly absent, never mixed), then the old one is deleted.
4. On any exception, KeyboardInterrupt or SystemExit the temporary folder is
   removed and ``out_dir`` keeps the earlier report; the lock file is removed.

Only an absent or empty folder, or one holding a jaxviz report and nothing
else, is ever replaced.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxviz._io import LockHeldError, path_lock, replace_directory
from jaxviz.checks import ArgumentError, ArgumentTypeError, NotADirectoryArgumentError, PathExistsError

__all__ = ["check_folder", "check_output_dir", "check_report_dir", "write_folder"]

_REPORT_FILES = ("index.html", "results.json")
_REPORT_PNG = re.compile(r"(confusion|topk|selectivity|occlusion_masks|occlusion_heatmaps|visualizations|trust|tsne|"
                         r"filters_\w+|activations_\w+)\.png")
_WRITE_LEFTOVER = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")  # atomic_path's temporary names (killed writes)


def _leftover_dirs(out: Path) -> re.Pattern:
    """Names of this report's temporary folders beside ``out``: ``.<name>.tmp-<pid>-<hex>`` / ``.old-``."""
    return re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-\d+-[0-9a-f]+")


def _not_a_report(out: Path) -> str | None:
    """None if directory ``out`` is empty or holds a jaxviz report and nothing else; else why not."""
    entries = list(os.scandir(out))
    if not entries:
        return None
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        results = None
    if not (isinstance(results, dict) and {"settings", "figures"} <= results.keys()
            and isinstance(results["figures"], list)):
        return "it is not empty and is not a jaxviz report (no jaxviz results.json)"
    figures = {f for f in results["figures"] if isinstance(f, str)}
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                     if not (e.is_file(follow_symlinks=False)
                             and (e.name in _REPORT_FILES or e.name in figures
                                  or _REPORT_PNG.fullmatch(e.name) or _WRITE_LEFTOVER.fullmatch(e.name))))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"besides a jaxviz report it holds {', '.join(map(repr, foreign[:5]))}{more}"
    return None


def _check_target(out: Path, shown: str, name: str = "out_dir") -> None:
    """``out`` is a directory or absent, and its nearest existing ancestor a writable directory."""
    if os.path.lexists(out) and not out.is_dir():
        what = "a broken symbolic link" if not out.exists() else "a file"
        raise NotADirectoryArgumentError(f"{name}: expected a directory, but {shown!r} is {what}")
    ancestor = out.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryArgumentError(f"{name}: cannot create {shown!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: cannot write {shown!r}: the directory {str(ancestor)!r} is not writable")


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed; raise if it is a file or not writable.

    For the commands that write single files into a folder; ``make_report``
    uses ``check_report_dir``, which creates nothing.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ArgumentTypeError("out_dir", f"expected a path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir)
    _check_target(out, str(out_dir))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"out_dir: cannot create {str(out)!r} ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir: {str(out)!r} is not writable")
    return out


def check_folder(out_dir: str | os.PathLike, not_ours: Callable[[Path], str | None], name: str = "out_dir") -> Path:
    """Check that the folder ``out_dir`` may be (re)written whole; create nothing.

    ``out_dir`` must be absent, or a directory for which ``not_ours(path)`` is None (empty, or holding only what
    the writer writes), which the new folder replaces; anything else is refused (``FileExistsError``) so that no
    unrelated folder is ever deleted. Its parent (or the nearest existing ancestor) must be a writable
    directory. Errors name the argument ``name``. Returns the absolute path (symbolic links resolved).
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ArgumentTypeError(name, f"expected a path (str or os.PathLike), got {type(out_dir).__name__}")
    shown = os.fsdecode(out_dir)
    if not shown:
        raise ArgumentError(name, "expected a directory path, got ''")
    out = Path(os.path.realpath(out_dir))
    if out.parent == out:
        raise ArgumentError(name, f"expected a directory below a parent directory, got {shown!r}")
    _check_target(out, shown, name)
    if out.is_dir():
        why = not_ours(out)
        if why is not None:
            raise PathExistsError(f"{name}: refusing to replace {shown!r}: {why}; choose another directory or empty it")
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"{name}: {shown!r} is not writable")
    return out


def check_report_dir(out_dir: str | os.PathLike) -> Path:
    """Check that a report can be written to ``out_dir``; create nothing (``check_folder``).

    ``out_dir`` must be absent, an empty directory or a directory holding a
    jaxviz report and nothing else (``index.html``, ``results.json`` and the
    PNGs it lists), which the new report replaces.
    """
    return check_folder(out_dir, _not_a_report)


def _restore_or_remove_leftovers(out: Path) -> None:
    """Under the lock: clean up after writers that died (SIGKILL, power loss) mid-report.

    A ``.old-`` folder while ``out`` is absent is the earlier report of a
    writer killed between its two renames: put it back. Every other
    temporary folder is an unfinished report (or an old one left to delete).
    """
    pattern = _leftover_dirs(out)
    found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    old = sorted((p for p in found if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
    if old and not os.path.lexists(out):
        os.rename(old[-1], out)
        found.remove(old[-1])
    for p in found:
        shutil.rmtree(p, ignore_errors=True)


def write_folder(out_dir: str | os.PathLike, write: Callable[[Path], Any], *,
                 not_ours: Callable[[Path], str | None] = _not_a_report, name: str = "out_dir",
                 what: str = "report") -> Any:
    """``write(tmp)`` into a temporary sibling of ``out_dir``, then swap it in (see the module docstring).

    ``not_ours`` says which folders may be replaced (as ``check_folder``; default: a report's), ``name`` is the
    argument named in errors and ``what`` the folder's kind (the atlas passes its own).

    Returns:
      What ``write`` returned.
    """
    out = check_folder(out_dir, not_ours, name)
    # Everything checked: now write.
    shown = os.fsdecode(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path_lock(out):
            check_folder(out_dir, not_ours, name)  # again: the folder may have changed while the data loaded
            _restore_or_remove_leftovers(out)
            tag = f"{os.getpid()}-{secrets.token_hex(4)}"
            tmp, aside = out.with_name(f".{out.name}.tmp-{tag}"), out.with_name(f".{out.name}.old-{tag}")
            try:
                os.mkdir(tmp)
                results = write(tmp)
                replace_directory(tmp, out, aside)
            finally:  # also on KeyboardInterrupt and SystemExit (the CLI's SIGTERM)
                if os.path.lexists(aside) and not os.path.lexists(out):
                    os.rename(aside, out)  # interrupted between the two renames: the earlier report goes back
                shutil.rmtree(tmp, ignore_errors=True)  # unfinished, or the earlier report after an exchange
                shutil.rmtree(aside, ignore_errors=True)
    except LockHeldError as e:
        user_lock = Path(shown).parent / e.lock.name
        if os.path.realpath(user_lock) != str(e.lock):
            user_lock = e.lock
        raise BlockingIOError(f"{name}: another jaxviz {what} is writing {shown!r} (lock file "
                              f"{str(user_lock)!r} held by pid {e.pid if e.pid is not None else 'unknown'})"
                              ) from None
    return results


