"""The on-disk store of a dataset run: zarr arrays (written with tensorstore), settings and completion records.

Layout of a run directory::

    .jaxviz-run           the marker: this folder is a jaxviz run (written first, before anything else)
    settings.json         what was run (method, layer, units, model and data fingerprints, step size)
    arrays/NAME/          one zarr v3 array per result (per-image rows, the optional grid, the aggregates)
    records/record-S.npz  completion records: "steps before S are done", with the running aggregates
    summary.json          throughput and where the time went (written by process 0 at the end)

Why tensorstore: it is already installed with flax (orbax-checkpoint's storage
engine), it writes the standard zarr format that zarr-python, xarray or dask
read, its writes are asynchronous (they overlap the next step's compute), and
a write that covers whole storage chunks needs no read-modify-write, so
processes that write disjoint chunks need no lock. Each chunk file is written
to a temporary name and renamed, so a kill never leaves a half-written chunk.

A completion record is one ``.npz`` written atomically (temporary name, then
rename) with a SHA-256 of its contents inside; a record that fails the check
is ignored and the run resumes from the one before (the last two are kept).

Only an absent or empty folder, or a run (the marker, or the settings of a
run), is ever written: ``not_a_run`` says why another folder is refused, so
that ``clear`` never empties a folder that is not a run. Paths are made
absolute and normalized (``resolve``) before tensorstore sees them: its file
driver refuses ``..``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxviz._io import atomic_write_bytes

__all__ = ["FORMAT", "MARKER", "RunStoreError", "array_opens", "clear", "create_array", "fingerprint", "latest_record", "mark",
           "not_a_run", "open_array", "read_json", "resolve", "save_record", "write_json"]

FORMAT = 1
KEEP_RECORDS = 2
MARKER = ".jaxviz-run"  # written first into a run's folder: what may be cleared is a run's
RUN_ENTRIES = ("arrays", "records", "settings.json", "summary.json")


class RunStoreError(OSError):
    """The run directory could not be written (permissions, a full disk, a file-size limit)."""


def resolve(path: str | os.PathLike) -> Path:
    """``path`` absolute and normalized (``..`` and symbolic links resolved): tensorstore refuses ``..``."""
    return Path(os.path.realpath(os.fspath(path)))


def settings_key(**parts: Any) -> str:
    """A short SHA-256 of JSON-able settings (keys sorted; other values by ``str``): what names a cache entry or a
    records folder made with exactly these settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(*arrays: Any) -> str:
    """A short SHA-256 of the leaves of pytrees of arrays (dtypes, shapes and bytes): what identifies a model's
    variables or a dataset's rows in a run's settings."""
    h = hashlib.sha256()
    for a in arrays:
        for leaf in jax.tree_util.tree_leaves(a):
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):  # an nnx RNG stream's key
                h.update(f"{leaf.dtype}".encode())
                leaf = jax.random.key_data(leaf)
            leaf = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
            h.update(leaf.tobytes())
    return h.hexdigest()[:16]


def _spec(root: Path, name: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(resolve(root) / "arrays" / name)}}


def create_array(root: Path, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
                 fill_value: Any = 0):
    """A new zarr array ``root/arrays/name`` (replacing one of that name), chunked as given."""
    import tensorstore as ts

    spec = _spec(root, name)
    spec["metadata"] = {"shape": list(shape), "data_type": np.dtype(dtype).name,
                        "chunk_grid": {"name": "regular",
                                       "configuration": {"chunk_shape": [max(1, int(c)) for c in chunks]}},
                        "fill_value": fill_value}
    try:
        return ts.open(spec, create=True, delete_existing=True).result()
    except Exception as e:  # tensorstore raises ValueError for I/O failures
        raise RunStoreError(f"could not create {Path(root) / 'arrays' / name}: {e}") from None


def open_array(root: Path, name: str):
    """The zarr array ``root/arrays/name``, opened lazily (slicing reads only the chunks needed)."""
    import tensorstore as ts

    try:
        return ts.open(_spec(root, name), open=True).result()
    except Exception as e:
        raise RunStoreError(f"could not open {Path(root) / 'arrays' / name}: {e}") from None


def array_opens(root: Path, name: str) -> bool:
    """Whether the zarr array ``root/arrays/name`` is there and its metadata reads."""
    try:
        open_array(root, name)
    except RunStoreError:
        return False
    return True


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent.

    Raises:
      ValueError naming the file when it is not a JSON object (garbled, truncated, another value).
    """
    try:
        value = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is damaged (not JSON: {str(e).splitlines()[0][:80]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged (a JSON {type(value).__name__}, not an object)")
    return value


def write_json(path: Path, value: dict) -> None:
    try:
        atomic_write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())
    except OSError as e:
        raise RunStoreError(f"could not write {path}: {e}") from None


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _record_path(root: Path, step: int) -> Path:
    return Path(root) / "records" / f"record-{step:09d}.npz"


def save_record(root: Path, step: int, arrays: dict[str, np.ndarray]) -> None:
    """Record atomically that every step before ``step`` is done, with ``arrays`` (the running state);
    keep the last ``KEEP_RECORDS`` records."""
    buffer = io.BytesIO()
    np.savez(buffer, _digest=np.asarray(_digest(arrays)), **arrays)
    path = _record_path(root, step)
    try:
        atomic_write_bytes(path, buffer.getvalue())
        for old in sorted(path.parent.glob("record-*.npz"))[:-KEEP_RECORDS]:
            old.unlink(missing_ok=True)
    except OSError as e:
        raise RunStoreError(f"could not write the completion record {path}: {e}") from None


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:  # truncated, garbled, not a zip: corrupt
        return None
    digest = arrays.pop("_digest", None)
    if digest is None or str(digest) != _digest(arrays):
        return None
    return arrays


def latest_record(root: Path) -> tuple[int, dict[str, np.ndarray] | None, list[Path]]:
    """The newest record that passes its checksum: ``(step, arrays, corrupt records skipped)``;
    ``(0, None, [...])`` when there is none."""
    corrupt = []
    for path in sorted((Path(root) / "records").glob("record-*.npz"), reverse=True):
        arrays = _load(path)
        if arrays is not None:
            return int(path.stem.split("-")[1]), arrays, corrupt
        corrupt.append(path)
    return 0, None, corrupt


def not_a_run(root: Path) -> str | None:
    """None if ``root`` is absent, an empty directory or a run (its marker, or the settings of a run made
    before the marker existed); else why it is not a run."""
    root = Path(root)
    if not root.is_dir() or not any(os.scandir(root)) or (root / MARKER).is_file():
        return None
    try:
        settings = read_json(root / "settings.json")
    except (OSError, ValueError):
        settings = None
    if isinstance(settings, dict) and settings.get("format") == FORMAT and "method" in settings:
        return None
    return f"it is not empty and holds no jaxviz run (no {MARKER} marker or settings.json of a run)"


def mark(root: Path) -> None:
    """Mark ``root`` as a run's folder (before anything else is written into it)."""
    if not (Path(root) / MARKER).is_file():
        write_json(Path(root) / MARKER, {"jaxviz_run": FORMAT})


def clear(root: Path) -> None:
    """Remove what a run writes from ``root`` (a previous run's, or a start killed before its settings); the
    caller has checked that ``root`` is a run (``not_a_run``). The marker stays."""
    for name in RUN_ENTRIES:
        path = Path(root) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
