"""``jaxviz._io``: the directory lock and the directory swap that ``make_report`` relies on."""

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxviz import _io
from jaxviz._io import LockHeldError, exchange_paths, lock_path, path_lock, replace_directory

IO_FILE = Path(_io.__file__)


def _tree(d: Path) -> dict:
    return {p.name: p.read_text() for p in d.iterdir()}


def _make(d: Path, **files: str) -> Path:
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    target = tmp_path / "r1"
    assert lock_path(target) == tmp_path / ".r1.lock"
    with path_lock(target) as lock:
        assert lock == tmp_path / ".r1.lock" and lock.read_text().strip() == str(os.getpid())
        with pytest.raises(LockHeldError, match=r"\.r1\.lock") as e:
            with path_lock(target):
                pass
        assert e.value.pid == os.getpid() and isinstance(e.value, OSError)
    assert list(tmp_path.iterdir()) == []  # released: no lock file left
    with path_lock(target):  # and it can be taken again
        pass


def test_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with path_lock(tmp_path / "r1"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_nobody_holds_is_taken_over(tmp_path):
    (tmp_path / ".r1.lock").write_text("999999\n")  # left by a killed writer
    with path_lock(tmp_path / "r1") as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_the_lock_of_a_killed_holder_is_released(tmp_path):
    """SIGKILL skips every cleanup: the lock file stays, but the kernel drops the flock."""
    script = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("jaxviz_io", {str(IO_FILE)!r})
        io = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(io)
        with io.path_lock({str(tmp_path / "r1")!r}):
            print("LOCKED", flush=True)
            time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the child never took the lock"
        assert proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(LockHeldError, match=f"pid {proc.pid}"):
            with path_lock(tmp_path / "r1"):
                pass
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert (tmp_path / ".r1.lock").exists()  # stale file...
    with path_lock(tmp_path / "r1"):  # ...that blocks no one
        pass
    assert list(tmp_path.iterdir()) == []


def test_replace_directory_into_an_absent_path(tmp_path):
    new = _make(tmp_path / ".r1.tmp", a="new")
    replace_directory(new, tmp_path / "r1", tmp_path / ".r1.old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]
    assert _tree(tmp_path / "r1") == {"a": "new"}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_replace_directory_replaces_the_old_one_whole(tmp_path, monkeypatch, exchange):
    used = []
    real = _io.exchange_paths

    def spy(a, b):
        used.append(real(a, b) if exchange else False)
        return used[-1]

    monkeypatch.setattr(_io, "exchange_paths", spy)
    _make(tmp_path / "r1", a="old", b="old only")
    new = _make(tmp_path / ".r1.tmp", a="new", c="new only")
    replace_directory(new, tmp_path / "r1", tmp_path / ".r1.old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]
    assert _tree(tmp_path / "r1") == {"a": "new", "c": "new only"}
    if exchange and not used[0]:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here; the fallback ran")
    assert used == [exchange]


def test_replace_directory_puts_the_old_one_back_if_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "exchange_paths", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name == ".r1.tmp":
            raise KeyboardInterrupt  # e.g. Ctrl-C between the two renames
        real_rename(src, dst)

    monkeypatch.setattr(_io.os, "rename", rename)
    _make(tmp_path / "r1", a="old")
    _make(tmp_path / ".r1.tmp", a="new")
    with pytest.raises(KeyboardInterrupt):
        replace_directory(tmp_path / ".r1.tmp", tmp_path / "r1", tmp_path / ".r1.old")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r1.tmp", "r1"]
    assert _tree(tmp_path / "r1") == {"a": "old"}


def test_exchange_paths_swaps_two_directories(tmp_path):
    a, b = _make(tmp_path / "a", x="a"), _make(tmp_path / "b", x="b")
    if not exchange_paths(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert _tree(a) == {"x": "b"} and _tree(b) == {"x": "a"}
    with pytest.raises(FileNotFoundError):
        exchange_paths(a, tmp_path / "missing")
