"""File helpers: atomic writes, checksums, directory locks and directory swaps."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockHeldError", "atomic_path", "atomic_write_bytes", "exchange_paths", "file_digest", "lock_path",
           "path_lock", "replace_directory"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash or exception leaves ``path`` as it was (old content or absent)
    and removes the temporary file, so no half-written file is ever visible
    under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes files 0600; give the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``"sha256"`` or ``"md5"``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- locks and directory swaps


class LockHeldError(BlockingIOError):
    """``path_lock`` found the lock held by another writer (``pid``: its pid, or None if unknown)."""

    def __init__(self, message: str, lock: Path, pid: int | None):
        super().__init__(message)
        self.lock, self.pid = lock, pid


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def path_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (which need not exist) while the block runs.

    The lock is ``fcntl.flock`` on ``lock_path(path)`` (created, holding the
    holder's pid, and removed on release). The kernel drops a flock when its
    holder dies, so a killed writer (even SIGKILL) never leaves a lock that
    blocks later writers: a leftover lock file that nobody holds is simply
    taken over. Raises ``LockHeldError`` at once if another writer holds it.
    Where ``fcntl`` is missing (Windows) the lock file is created with
    ``O_EXCL`` instead, which a killed writer does leave behind.
    """
    lock = lock_path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    while True:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | (0 if fcntl else os.O_EXCL)
        try:
            fd = os.open(lock, flags, 0o644)
        except FileExistsError:  # pragma: no cover - the O_EXCL fallback
            try:
                pid = int(Path(lock).read_text().strip())
            except (OSError, ValueError):
                pid = None
            raise LockHeldError(f"{str(lock)!r} is held by pid {pid}", lock, pid) from None
        if fcntl is None:  # pragma: no cover
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise LockHeldError(f"{str(lock)!r} is held by pid {pid}", lock, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # A releasing holder unlinks the file: make sure we locked the file that is still there.
        try:
            same = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        try:
            os.unlink(lock)  # while still holding it, so no one locks a file about to vanish
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths with Linux ``renameat2(RENAME_EXCHANGE)``.

    Returns False (and changes nothing) where that is not available: not
    Linux, a C library without ``renameat2``, or a file system without
    exchange support. Other failures raise ``OSError``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike, aside: str | os.PathLike) -> None:
    """Move the directory ``src`` to ``dst``, replacing (and deleting) an existing ``dst``.

    ``src``, ``dst`` and ``aside`` must be siblings (same file system).
    ``dst`` absent: one ``os.rename``. ``dst`` present: an atomic
    ``exchange_paths`` where the system has it, else two renames (``dst`` to
    ``aside``, then ``src`` to ``dst``; in between ``dst`` is briefly absent,
    never a mix of old and new; if the second rename fails the old ``dst``
    is put back). The old directory is deleted afterwards. Readers thus see
    the old directory or the new one, never a mix.
    """
    src, dst, aside = Path(src), Path(dst), Path(aside)
    if not os.path.lexists(dst):
        os.rename(src, dst)
        _fsync_dir(dst.parent)
        return
    old = None
    try:
        if exchange_paths(src, dst):
            old = src
        else:
            os.rename(dst, aside)
            try:
                os.rename(src, dst)
            except BaseException:
                os.rename(aside, dst)  # put the old one back
                raise
            old = aside
        _fsync_dir(dst.parent)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
