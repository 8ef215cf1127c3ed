"""The official CIFAR-10 archives: download, verify, extract, load.

``load_cifar10`` reads either official layout from
https://www.cs.toronto.edu/~kriz/cifar.html:

* ``"binary"`` (default): ``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``.
  Each record is 1 label byte + 3072 pixel bytes (1024 red, 1024 green,
  1024 blue, each a row-major 32x32 plane). No pickle involved.
* ``"python"``: ``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``, pickled
  dicts. Pickle can run code, so these files are read with a restricted
  unpickler (numpy array globals only), and only from a folder that jaxviz
  extracted itself from an archive whose MD5 it verified (it leaves a
  ``.jaxviz-verified`` marker holding the MD5), unless the caller opts in
  with ``trust_unverified_pickle=True`` (API only; the CLI has no such option).
  Any failure to read a pickle, a refused global included, is a ``ValueError``.

Every official batch file holds exactly ``RECORDS_PER_FILE`` (10,000) images;
a file with fewer or more (e.g. truncated at a record boundary) is refused.

Files live in ``data_dir`` or, by default, in ``cache_dir()``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from jaxviz._io import atomic_path, file_digest
from jaxviz._progress import progress_bar
from jaxviz.checks import ArgumentError, PathNotFoundError
from jaxviz.data.images import CIFAR10_CLASSES, Dataset

__all__ = ["CIFAR10_BASE_URL", "RECORDS_PER_FILE", "DownloadError", "cache_dir", "load_cifar10"]

CIFAR10_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
MARKER = ".jaxviz-verified"
_RECORD = 1 + 3 * 32 * 32  # label byte + pixels
RECORDS_PER_FILE = 10_000  # images in every official batch file (binary: 30,730,000 bytes); tests shrink it

# layout -> archive, extracted folder, official MD5, split files, meta file
_LAYOUTS = {
    "binary": dict(
        archive="cifar-10-binary.tar.gz", folder="cifar-10-batches-bin",
        md5="c32a1d4ab5d03f1284b67883e8d87530", meta="batches.meta.txt",
        files={"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}),
    "python": dict(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        md5="c58f30108f718f92721af3b95e74349a", meta="batches.meta",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
}


class DownloadError(OSError):
    """The archive could not be downloaded (network or HTTP failure)."""


def cache_dir() -> Path:
    """The default data directory.

    Returns:
      ``$JAXVIZ_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/jaxviz``, else
      ``~/.cache/jaxviz``. The directory is not created.
    """
    env = os.environ.get("JAXVIZ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(os.path.expanduser(xdg)):  # the XDG spec ignores relative paths
        return Path(xdg).expanduser() / "jaxviz"
    return Path.home() / ".cache" / "jaxviz"


def load_cifar10(split: str = "test", *, data_dir: str | os.PathLike | None = None,
                 layout: str = "binary", download: bool = True, url: str | None = None,
                 md5: str | None = None, trust_unverified_pickle: bool = False,
                 progress: bool = True) -> Dataset:
    """Load a CIFAR-10 split from the official archive, downloading it if needed.

    In the data directory: an extracted folder is loaded as is; else an archive
    is MD5-verified and extracted (atomically, beside itself); else, with
    ``download``, the archive is downloaded, verified and extracted.

    Args:
      split: ``"train"`` (50,000 images, ``data_batch_1..5``) or ``"test"``
        (10,000 images, ``test_batch``).
      data_dir: directory holding the archive or its extracted folder; must
        exist. Default: ``cache_dir()`` (created when needed).
      layout: ``"binary"`` (default, no pickle) or ``"python"`` (pickles).
      download: download the archive when neither it nor the folder is present.
      url: full URL of the archive. Default: ``$JAXVIZ_CIFAR10_URL`` if set,
        which is a *base* URL (a directory) to which the archive name is
        appended, else ``CIFAR10_BASE_URL`` + archive name.
      md5: expected MD5 of the archive. Default: the official MD5 of
        ``layout``. Meant for mirrors of modified archives and for tests.
      trust_unverified_pickle: allow the python layout to be read from a folder
        that jaxviz did not extract from a verified archive (e.g. extracted by
        hand). Pickles are still read with the restricted unpickler. API only:
        the CLI has no such option.
      progress: show a download progress bar.

    Returns:
      ``Dataset`` of uint8 (N, 32, 32, 3) RGB HWC images and labels; class
      names from the meta file (``CIFAR10_CLASSES`` if it is absent);
      ``source`` is the extracted folder.

    Raises:
      ValueError: bad argument; archive MD5 mismatch; corrupt archive or batch
        file (a batch file without exactly ``RECORDS_PER_FILE`` images
        included); python layout folder without a verification marker; a
        python-layout file that is not a readable pickle or that refers to a
        forbidden global (that error is also a ``pickle.UnpicklingError``).
      FileNotFoundError: ``data_dir`` is not a directory, or nothing to load and
        ``download`` is False.
      DownloadError: the download failed (an ``OSError``).
    """
    if split not in ("train", "test"):
        raise ArgumentError("split", f"expected 'train' or 'test', got {split!r}")
    if layout not in _LAYOUTS:
        raise ArgumentError("layout", f"expected 'binary' or 'python', got {layout!r}")
    spec = _LAYOUTS[layout]
    if md5 is None:
        md5 = spec["md5"]
    elif not (isinstance(md5, str) and len(md5) == 32 and all(c in "0123456789abcdefABCDEF" for c in md5)):
        raise ArgumentError("md5", f"expected 32 hex digits, got {md5!r}")
    md5 = md5.lower()

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise PathNotFoundError(f"data_dir: expected an existing directory, got {str(root)!r}")
    else:
        root = cache_dir()
    folder, archive = root / spec["folder"], root / spec["archive"]
    official_url = CIFAR10_BASE_URL + spec["archive"]

    if not folder.is_dir():
        if not archive.is_file():
            if not download:
                raise FileNotFoundError(
                    f"CIFAR-10 ({layout} layout) not found in {str(root)!r}: neither "
                    f"{spec['folder']}/ nor {spec['archive']} is there. To work offline, download "
                    f"{official_url} and put {spec['archive']} in {str(root)!r}, or allow the download "
                    f"(download=True in the API; drop --no-download in the CLI).")
            _download(_resolve_url(url, spec["archive"]), archive, md5, official_url, progress)
        _check_md5(archive, md5)
        _extract(archive, folder, md5)

    if layout == "binary":
        images, labels = _load_binary(folder, spec["files"][split])
        names = _binary_class_names(folder / spec["meta"])
    else:
        _check_verified(folder, archive, md5, trust_unverified_pickle)
        images, labels = _load_python(folder, spec["files"][split])
        names = _python_class_names(folder / spec["meta"])
    return Dataset(images, labels, names, source=str(folder))


# --- download, verification, extraction --------------------------------------

def _resolve_url(url: str | None, archive_name: str) -> str:
    if url:
        return url
    base = os.environ.get("JAXVIZ_CIFAR10_URL") or CIFAR10_BASE_URL
    return base.rstrip("/") + "/" + archive_name


def _download(url: str, target: Path, md5: str, official_url: str, progress: bool) -> None:
    """Stream ``url`` into a temp file beside ``target``; rename it there only if the MD5 matches."""
    offline_hint = (f"To work offline, download {official_url} and put {target.name} "
                    f"in {str(target.parent)!r}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:  # removes the temp file on any exception
        h = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with progress_bar(total=total, desc=f"Downloading {target.name}", disable=not progress,
                                  unit="B", unit_scale=True) as bar:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        f.write(block)
                        h.update(block)
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:  # URLError, HTTPError, timeouts, IncompleteRead, resets ...
            if isinstance(e, OSError) and getattr(e, "filename", None) == str(tmp):
                raise  # a local write error (e.g. disk full), not a network one
            raise DownloadError(f"could not download {url}: {e}. {offline_hint}") from e
        if h.hexdigest() != md5:
            raise ValueError(
                f"{target.name} downloaded from {url} has MD5 {h.hexdigest()}, expected {md5}; "
                f"the file was deleted (corrupt download or wrong file). {offline_hint}")


def _check_md5(archive: Path, md5: str) -> None:
    actual = file_digest(archive, "md5")
    if actual != md5:
        raise ValueError(
            f"{str(archive)!r}: MD5 {actual} does not match the expected {md5} "
            f"(truncated, corrupt or not the official archive); delete it and try again.")


def _extract(archive: Path, folder: Path, md5: str) -> None:
    """Extract ``folder.name`` from ``archive`` into a temp dir beside ``folder``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    _extract_member(tar, member, tmp, archive)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ValueError(f"{str(archive)!r}: not a readable .tar.gz archive "
                             f"(truncated or corrupt): {e}") from None
        extracted = tmp / folder.name
        if not extracted.is_dir():
            raise ValueError(f"{str(archive)!r}: the archive has no {folder.name}/ folder")
        (extracted / MARKER).write_text(md5 + "\n")
        try:
            os.rename(extracted, folder)
        except OSError:
            if not folder.is_dir():  # else another process extracted it first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise ValueError(f"{str(archive)!r}: refusing unsafe member path {member.name!r}")
    target = dest.joinpath(*[p for p in path.parts if p != "."])
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
    elif member.isfile():
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    else:
        raise ValueError(f"{str(archive)!r}: refusing member {member.name!r} "
                         f"(links and special files are not expected in CIFAR-10)")


def _check_verified(folder: Path, archive: Path, md5: str, trust: bool) -> None:
    marker = folder / MARKER
    found = marker.read_text().strip() if marker.is_file() else None
    if found == md5 or trust:
        return
    why = (f"its {MARKER} marker records MD5 {found}, not the expected {md5}" if found is not None
           else "it was not extracted by jaxviz from an MD5-verified archive")
    raise ValueError(
        f"{str(folder)!r}: refusing to unpickle python-layout files because {why}; unpickling "
        f"untrusted files can run code. Delete the folder and put {archive.name} in "
        f"{str(folder.parent)!r} so jaxviz verifies and extracts it; or use the binary layout, which "
        f"has no pickle (layout='binary' in the API, --layout binary in the CLI); or, if you trust "
        f"these files, pass trust_unverified_pickle=True (API only; the CLI has no such option).")


# --- readers -----------------------------------------------------------------

def _planes_to_hwc(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) R-plane, G-plane, B-plane rows -> (N, 32, 32, 3) uint8."""
    return np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _batch_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing from the extracted CIFAR-10 folder; "
                                f"delete {str(folder)!r} and load again to re-extract")
    return path


def _load_binary(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = _batch_file(folder, name)
        expected = RECORDS_PER_FILE * _RECORD
        size = path.stat().st_size
        if size != expected:
            raise ValueError(
                f"{str(path)!r}: size {size:,} bytes, expected {expected:,} ({RECORDS_PER_FILE:,} records "
                f"of {_RECORD} bytes); the file is truncated or corrupt. {_reextract_hint(folder)}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size != expected:  # changed while we read it
            raise ValueError(f"{str(path)!r}: read {raw.size:,} bytes, expected {expected:,}")
        records = raw.reshape(-1, _RECORD)
        labels.append(records[:, 0].astype(np.int64))
        images.append(_planes_to_hwc(records[:, 1:]))
    return np.concatenate(images), np.concatenate(labels)


def _reextract_hint(folder: Path) -> str:
    return f"Delete {str(folder)!r} and load again to re-extract it from the official archive."


def _binary_class_names(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return CIFAR10_CLASSES
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r}: expected UTF-8 class names, one per line ({e})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    return names or CIFAR10_CLASSES


def _numpy_reconstruct_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    import _codecs

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError, ValueError):
    """A pickle referred to a global outside the allow-list.

    A ``ValueError`` (so callers and the CLI treat it as bad input) and, as
    before, a ``pickle.UnpicklingError``.
    """


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, dtypes and scalars."""

    _allowed = _numpy_reconstruct_globals()

    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(
                f"{self._source}: refusing to load global {module}.{name}: only numpy array "
                f"reconstruction is allowed, so this is not a genuine CIFAR-10 file "
                f"(unpickling it could run code); nothing was run") from None


def _unpickle(path: Path) -> dict:
    """Read a pickled dict with the restricted unpickler; every failure to parse it is a ``ValueError``."""
    with open(path, "rb") as f:  # an OSError here (e.g. permissions) stays one
        try:
            obj = _RestrictedUnpickler(f, source=repr(str(path))).load()
        except _ForbiddenGlobal:
            raise
        except Exception as e:  # hostile or corrupt bytes: any error of the parser or of the allowed callables
            raise ValueError(f"{str(path)!r}: corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _load_python(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = _batch_file(folder, name)
        batch = _unpickle(path)
        data, labs = batch.get(b"data"), batch.get(b"labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == _RECORD - 1):
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{str(path)!r}: expected b'data' to be uint8 (N, 3072), got {desc}")
        if data.shape[0] != RECORDS_PER_FILE:
            raise ValueError(f"{str(path)!r}: {data.shape[0]:,} images, expected {RECORDS_PER_FILE:,} "
                             f"(every CIFAR-10 batch file holds {RECORDS_PER_FILE:,}); the file is truncated "
                             f"or corrupt. {_reextract_hint(folder)}")
        try:
            labs = np.asarray(labs if labs is not None else [], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{str(path)!r}: expected b'labels' to be a list of integers, "
                             f"got {type(labs).__name__}") from None
        if labs.shape[0] != data.shape[0]:
            raise ValueError(f"{str(path)!r}: {data.shape[0]} images but {labs.shape[0]} b'labels'")
        images.append(_planes_to_hwc(data))
        labels.append(labs)
    return np.concatenate(images), np.concatenate(labels)


def _python_class_names(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return CIFAR10_CLASSES
    names = _unpickle(path).get(b"label_names")
    if names is None or (isinstance(names, (list, tuple)) and not names):
        return CIFAR10_CLASSES
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, (bytes, str)) for n in names)):
        raise ValueError(f"{str(path)!r}: expected b'label_names' to be a list of names, got {type(names).__name__}")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r}: expected UTF-8 b'label_names' ({e})") from None
