"""The on-disk store of a dataset run: zarr arrays (written with tensorstore), settings and completion records.

Layout of a run directory::

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
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz._io import atomic_write_bytes

__all__ = ["FORMAT", "RunStoreError", "create_array", "latest_record", "open_array", "read_json", "save_record",
           "write_json"]

FORMAT = 1
KEEP_RECORDS = 2


class RunStoreError(OSError):
    """The run directory could not be written (permissions, a full disk, a file-size limit)."""


def _spec(root: Path, name: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(Path(root) / "arrays" / name)}}


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


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


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


def clear(root: Path) -> None:
    """Remove what a run writes from ``root`` (a previous run's, or a start killed before its settings)."""
    for name in ("arrays", "records"):
        shutil.rmtree(Path(root) / name, ignore_errors=True)
    for name in ("settings.json", "summary.json"):
        (Path(root) / name).unlink(missing_ok=True)
