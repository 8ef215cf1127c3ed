"""Tests for jaxviz.data.cifar10 on tiny archives built in tmp_path (no internet)."""

from __future__ import annotations

import codecs
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import jaxviz.data.cifar10
from jaxviz._io import file_digest
from jaxviz.data import CIFAR10_CLASSES
from jaxviz.data.cifar10 import CIFAR10_BASE_URL, DownloadError, cache_dir, load_cifar10

BIN_ARCHIVE, BIN_FOLDER = "cifar-10-binary.tar.gz", "cifar-10-batches-bin"
PY_ARCHIVE, PY_FOLDER = "cifar-10-python.tar.gz", "cifar-10-batches-py"
OFFICIAL_PY_MD5 = "c58f30108f718f92721af3b95e74349a"
N_PER_FILE = 3  # records per fake batch file (the official files hold 10,000)
MODULE_RECORDS_PER_FILE = jaxviz.data.cifar10.RECORDS_PER_FILE  # before any test patches it
N_TRAIN_PER_BATCH, N_TEST = N_PER_FILE, N_PER_FILE
CUSTOM_NAMES = tuple(f"class{i}_{c}" for i, c in enumerate(CIFAR10_CLASSES))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setattr(jaxviz.data.cifar10, "RECORDS_PER_FILE", N_PER_FILE)  # tiny fake batch files
    monkeypatch.setenv("JAXVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXVIZ_CIFAR10_URL", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


# --- building tiny official-layout archives ----------------------------------

def make_records(n: int, seed: int) -> np.ndarray:
    """n records of 3073 bytes: label byte + R, G, B planes (random, fixed seed)."""
    rng = np.random.default_rng(seed)
    recs = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
    recs[:, 0] = rng.integers(0, 10, size=n)
    return recs


@pytest.fixture(scope="module")
def records():
    """Records per official file name stem, e.g. {"data_batch_1": ..., "test_batch": ...}."""
    out = {f"data_batch_{i}": make_records(N_TRAIN_PER_BATCH, seed=i) for i in range(1, 6)}
    out["test_batch"] = make_records(N_TEST, seed=99)
    return out


def reference(records, split):
    """Independent expected images/labels: one reshape per record."""
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    recs = [r for stem in stems for r in records[stem]]
    images = np.stack([r[1:].reshape(3, 32, 32).transpose(1, 2, 0) for r in recs])
    labels = np.array([int(r[0]) for r in recs])
    return images, labels


def tar_dir(src: Path, archive: Path, arcname: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def write_binary_folder(folder: Path, records, *, names=CIFAR10_CLASSES, meta=True) -> Path:
    folder.mkdir(parents=True)
    for stem, recs in records.items():
        (folder / f"{stem}.bin").write_bytes(recs.tobytes())
    if meta:
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return folder


def write_python_folder(folder: Path, records, *, names=CIFAR10_CLASSES) -> Path:
    folder.mkdir(parents=True)
    for stem, recs in records.items():
        batch = {b"batch_label": stem.encode(), b"labels": [int(x) for x in recs[:, 0]],
                 b"data": np.ascontiguousarray(recs[:, 1:]),
                 b"filenames": [f"img_{i}.png".encode() for i in range(len(recs))]}
        (folder / stem).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 3, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def binary_archive(tmp_path, records, dest: Path, **kw) -> Path:
    src = write_binary_folder(tmp_path / "src_bin" / BIN_FOLDER, records, **kw)
    return tar_dir(src, dest / BIN_ARCHIVE, BIN_FOLDER)


def python_archive(tmp_path, records, dest: Path, **kw) -> Path:
    src = write_python_folder(tmp_path / "src_py" / PY_FOLDER, records, **kw)
    return tar_dir(src, dest / PY_ARCHIVE, PY_FOLDER)


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# --- loading both layouts -----------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_binary_archive_pixel_order_labels_and_names(tmp_path, records, split):
    data = tmp_path / "data"
    archive = binary_archive(tmp_path, records, data, names=CUSTOM_NAMES)
    ds = load_cifar10(split, data_dir=data, download=False, md5=file_digest(archive, "md5"))
    want_images, want_labels = reference(records, split)
    assert ds.images.dtype == np.uint8 and ds.images.shape == want_images.shape
    np.testing.assert_array_equal(ds.images, want_images)
    np.testing.assert_array_equal(ds.labels, want_labels)
    assert ds.class_names == CUSTOM_NAMES
    assert ds.source == str(data / BIN_FOLDER)
    assert (data / BIN_FOLDER / ".jaxviz-verified").read_text().strip() == file_digest(archive, "md5")
    assert listing(data) == sorted([BIN_ARCHIVE, BIN_FOLDER])  # no temp dirs left


def test_pixel_planes_by_hand(tmp_path):
    """Row-major R, G, B planes: pixel (r, c) channel k is byte 1 + k*1024 + r*32 + c."""
    rec = make_records(N_PER_FILE, seed=7)
    folder = tmp_path / BIN_FOLDER
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(rec.tobytes())
    ds = load_cifar10("test", data_dir=tmp_path, download=False)
    for i in (0, N_PER_FILE - 1):
        img = ds.images[i]
        for r, c in [(0, 0), (0, 31), (1, 0), (5, 17), (31, 31)]:
            for k in range(3):
                assert img[r, c, k] == rec[i, 1 + k * 1024 + r * 32 + c]
        assert ds.labels[i] == rec[i, 0]
    assert ds.class_names == CIFAR10_CLASSES  # no meta file: official names


@pytest.mark.parametrize("split", ["train", "test"])
def test_python_archive_matches_reference(tmp_path, records, split):
    data = tmp_path / "data"
    archive = python_archive(tmp_path, records, data, names=CUSTOM_NAMES)
    md5 = file_digest(archive, "md5")
    ds = load_cifar10(split, data_dir=data, layout="python", download=False, md5=md5)
    want_images, want_labels = reference(records, split)
    np.testing.assert_array_equal(ds.images, want_images)
    np.testing.assert_array_equal(ds.labels, want_labels)
    assert ds.class_names == CUSTOM_NAMES
    assert (data / PY_FOLDER / ".jaxviz-verified").read_text().strip() == md5
    # the extracted, marked folder is reused without the archive
    (data / PY_ARCHIVE).unlink()
    again = load_cifar10(split, data_dir=data, layout="python", download=False, md5=md5)
    np.testing.assert_array_equal(again.images, want_images)


def test_binary_and_python_layouts_agree(tmp_path, records):
    data = tmp_path / "data"
    bmd5 = file_digest(binary_archive(tmp_path, records, data), "md5")
    pmd5 = file_digest(python_archive(tmp_path, records, data), "md5")
    b = load_cifar10("train", data_dir=data, md5=bmd5, download=False)
    p = load_cifar10("train", data_dir=data, layout="python", md5=pmd5, download=False)
    np.testing.assert_array_equal(b.images, p.images)
    np.testing.assert_array_equal(b.labels, p.labels)
    assert b.class_names == p.class_names == CIFAR10_CLASSES


def test_archive_md5_mismatch_is_refused(tmp_path, records):
    data = tmp_path / "data"
    archive = binary_archive(tmp_path, records, data)
    actual = file_digest(archive, "md5")
    with pytest.raises(ValueError) as e:
        load_cifar10("test", data_dir=data, download=False)  # official MD5 expected
    msg = str(e.value)
    assert BIN_ARCHIVE in msg and actual in msg and "c32a1d4ab5d03f1284b67883e8d87530" in msg
    assert listing(data) == [BIN_ARCHIVE]  # nothing extracted; the user's file is kept


# --- download -----------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(root=root, hits=hits, url=f"http://127.0.0.1:{srv.server_address[1]}/")
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_download_verify_extract_then_cache(tmp_path, records, server, monkeypatch):
    archive = binary_archive(tmp_path, records, server.root)
    md5 = file_digest(archive, "md5")
    monkeypatch.setenv("JAXVIZ_CIFAR10_URL", server.url.rstrip("/"))  # base URL, no trailing slash
    cache = tmp_path / "cache"
    ds = load_cifar10("test", md5=md5, progress=True)
    assert server.hits == [f"/{BIN_ARCHIVE}"]
    want_images, want_labels = reference(records, "test")
    np.testing.assert_array_equal(ds.images, want_images)
    np.testing.assert_array_equal(ds.labels, want_labels)
    assert listing(cache) == sorted([BIN_ARCHIVE, BIN_FOLDER])
    assert file_digest(cache / BIN_ARCHIVE, "md5") == md5
    ds2 = load_cifar10("train", md5=md5)
    assert len(server.hits) == 1  # cached: no second download
    np.testing.assert_array_equal(ds2.images, reference(records, "train")[0])


def test_download_with_explicit_url_into_data_dir(tmp_path, records, server):
    archive = python_archive(tmp_path, records, server.root / "mirror")
    data = tmp_path / "data"
    data.mkdir()
    ds = load_cifar10("test", data_dir=data, layout="python", url=server.url + "mirror/" + PY_ARCHIVE,
                      md5=file_digest(archive, "md5"), progress=False)
    assert server.hits == [f"/mirror/{PY_ARCHIVE}"]
    np.testing.assert_array_equal(ds.images, reference(records, "test")[0])
    assert listing(data) == sorted([PY_ARCHIVE, PY_FOLDER])
    assert listing(tmp_path / "cache") == []  # data_dir given: the cache is not touched


def test_download_md5_mismatch_leaves_nothing(tmp_path, records, server):
    archive = binary_archive(tmp_path, records, server.root)
    good = file_digest(archive, "md5")
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    archive.write_bytes(bytes(blob))
    bad = file_digest(archive, "md5")
    with pytest.raises(ValueError) as e:
        load_cifar10("test", url=server.url + BIN_ARCHIVE, md5=good, progress=False)
    msg = str(e.value)
    assert BIN_ARCHIVE in msg and good in msg and bad in msg
    assert listing(tmp_path / "cache") == []  # no archive, no temp file


def test_download_http_error_says_how_to_work_offline(tmp_path, server):
    with pytest.raises(DownloadError) as e:
        load_cifar10("test", url=server.url + "missing.tar.gz", progress=False)
    assert isinstance(e.value, OSError)
    msg = str(e.value)
    assert "404" in msg and BIN_ARCHIVE in msg and str(tmp_path / "cache") in msg
    assert CIFAR10_BASE_URL + BIN_ARCHIVE in msg
    assert listing(tmp_path / "cache") == []


def test_download_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=BIN_ARCHIVE):
        load_cifar10("test", url=f"http://127.0.0.1:{port}/{BIN_ARCHIVE}", progress=False)
    assert listing(tmp_path / "cache") == []


def test_offline_with_nothing_present(tmp_path):
    for layout, name in [("binary", BIN_ARCHIVE), ("python", PY_ARCHIVE)]:
        with pytest.raises(FileNotFoundError) as e:
            load_cifar10("test", layout=layout, download=False)
        msg = str(e.value)
        assert name in msg and CIFAR10_BASE_URL + name in msg and str(tmp_path / "cache") in msg
        # the hint makes sense to API and CLI users alike
        assert "download=True in the API" in msg and "drop --no-download in the CLI" in msg


def test_data_dir_must_exist(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="data_dir") as e:
        load_cifar10("test", data_dir=missing)
    assert str(missing) in str(e.value)


# --- corrupt and hostile inputs --------------------------------------------------

def test_truncated_archive(tmp_path, records):
    data = tmp_path / "data"
    archive = binary_archive(tmp_path, records, data)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_cifar10("test", data_dir=data, download=False, md5=file_digest(archive, "md5"))
    assert BIN_ARCHIVE in str(e.value)
    assert listing(data) == [BIN_ARCHIVE]  # no half-extracted folder, no temp dir


def test_not_a_gzip_archive(tmp_path):
    archive = tmp_path / BIN_ARCHIVE
    archive.write_bytes(b"this is not a tarball" * 10)
    with pytest.raises(ValueError, match=BIN_ARCHIVE):
        load_cifar10("test", data_dir=tmp_path, download=False, md5=file_digest(archive, "md5"))
    assert listing(tmp_path) == [BIN_ARCHIVE]


@pytest.mark.parametrize("bad_name", ["../escape.bin", "/tmp/abs-jaxviz-test.bin", f"{BIN_FOLDER}/../../x.bin"])
def test_unsafe_member_paths_are_refused(tmp_path, bad_name):
    data = tmp_path / "data"
    data.mkdir()
    archive = data / BIN_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"\0" * 3073
        info = tarfile.TarInfo(bad_name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="unsafe"):
        load_cifar10("test", data_dir=data, download=False, md5=file_digest(archive, "md5"))
    assert listing(data) == [BIN_ARCHIVE]
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "x.bin").exists()


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / BIN_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{BIN_FOLDER}/test_batch.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="refusing member"):
        load_cifar10("test", data_dir=tmp_path, download=False, md5=file_digest(archive, "md5"))
    assert listing(tmp_path) == [BIN_ARCHIVE]


def test_truncated_bin_file(tmp_path, records):
    folder = write_binary_folder(tmp_path / BIN_FOLDER, records)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="data_batch_3.bin") as e:
        load_cifar10("train", data_dir=tmp_path, download=False)
    assert "3073" in str(e.value)
    assert len(load_cifar10("test", data_dir=tmp_path, download=False)) == N_TEST  # other split fine


@pytest.mark.parametrize("n_records", [N_PER_FILE - 1, N_PER_FILE + 1, 0])
def test_bin_file_with_whole_records_missing_or_extra(tmp_path, records, n_records):
    """Cut (or padded) exactly at a record boundary: the size is a multiple of 3073 but still wrong."""
    folder = write_binary_folder(tmp_path / BIN_FOLDER, records)
    path = folder / "test_batch.bin"
    path.write_bytes(make_records(n_records, seed=5).tobytes())
    with pytest.raises(ValueError) as e:
        load_cifar10("test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert str(path) in msg and f"size {n_records * 3073:,} bytes" in msg
    assert f"expected {N_PER_FILE * 3073:,}" in msg and f"{N_PER_FILE:,} records" in msg


def test_official_record_count(tmp_path, monkeypatch):
    assert MODULE_RECORDS_PER_FILE == 10_000  # every official batch file, as shipped
    monkeypatch.setattr(jaxviz.data.cifar10, "RECORDS_PER_FILE", MODULE_RECORDS_PER_FILE)  # undo the fixture
    folder = tmp_path / BIN_FOLDER
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(make_records(9, seed=1).tobytes())
    with pytest.raises(ValueError) as e:
        load_cifar10("test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "expected 30,730,000" in msg and "10,000 records of 3073 bytes" in msg and "27,657" in msg


@pytest.mark.parametrize("n_images", [N_PER_FILE - 1, N_PER_FILE + 1])
def test_python_batch_with_wrong_image_count(tmp_path, records, n_images):
    folder = write_python_folder(tmp_path / PY_FOLDER, {"test_batch": make_records(n_images, seed=6)})
    with pytest.raises(ValueError) as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False, trust_unverified_pickle=True)
    msg = str(e.value)
    assert str(folder / "test_batch") in msg and f"{n_images:,} images, expected {N_PER_FILE:,}" in msg


def test_missing_batch_file(tmp_path, records):
    folder = write_binary_folder(tmp_path / BIN_FOLDER, records)
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5.bin"):
        load_cifar10("train", data_dir=tmp_path, download=False)


def test_out_of_range_label(tmp_path):
    rec = make_records(N_PER_FILE, seed=3)
    rec[1, 0] = 10
    (tmp_path / BIN_FOLDER).mkdir()
    (tmp_path / BIN_FOLDER / "test_batch.bin").write_bytes(rec.tobytes())
    with pytest.raises(ValueError, match="labels"):
        load_cifar10("test", data_dir=tmp_path, download=False)


def test_python_folder_without_marker_needs_opt_in(tmp_path, records):
    write_python_folder(tmp_path / PY_FOLDER, records)
    with pytest.raises(ValueError, match="trust_unverified_pickle=True") as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False)
    msg = str(e.value)  # the hints name both spellings, and say what the CLI lacks
    assert "layout='binary' in the API, --layout binary in the CLI" in msg
    assert "API only; the CLI has no such option" in msg
    ds = load_cifar10("test", data_dir=tmp_path, layout="python", download=False,
                      trust_unverified_pickle=True)
    np.testing.assert_array_equal(ds.images, reference(records, "test")[0])


def test_python_marker_for_other_md5_is_refused(tmp_path, records):
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    (folder / ".jaxviz-verified").write_text("0" * 32 + "\n")
    with pytest.raises(ValueError, match="0{32}"):
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False)
    (folder / ".jaxviz-verified").write_text(OFFICIAL_PY_MD5 + "\n")  # official MD5
    ds = load_cifar10("test", data_dir=tmp_path, layout="python", download=False)
    assert len(ds) == N_TEST


def test_malicious_pickle_rejected_even_when_trusted(tmp_path, records):
    pwned = tmp_path / "pwned"
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(pwned)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system") as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False,
                     trust_unverified_pickle=True)
    assert isinstance(e.value, ValueError)  # bad input, like every other failure to read a pickle
    assert str(folder / "test_batch") in str(e.value) and "refusing to load global" in str(e.value)
    assert not pwned.exists()


def test_malicious_pickle_rejected_in_verified_archive(tmp_path, records):
    pwned = tmp_path / "pwned"
    src = write_python_folder(tmp_path / "src" / PY_FOLDER, records)
    (src / "batches.meta").write_bytes(pickle.dumps(Evil(pwned), protocol=0))
    data = tmp_path / "data"
    archive = tar_dir(src, data / PY_ARCHIVE, PY_FOLDER)
    with pytest.raises(ValueError, match="batches.meta") as e:
        load_cifar10("test", data_dir=data, layout="python", download=False,
                     md5=file_digest(archive, "md5"))
    assert isinstance(e.value, pickle.UnpicklingError)
    assert not pwned.exists()


def test_forged_marker_and_malicious_pickle_is_one_line_in_the_cli(tmp_path, records, capsys):
    """The bug report: a forged verification marker used to give a 27-line traceback."""
    from jaxviz.cli import main

    pwned = tmp_path / "pwned"
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    (folder / ".jaxviz-verified").write_text(OFFICIAL_PY_MD5 + "\n")  # forged
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(pwned)}, protocol=2))
    code = main(["evaluate", "--data", "cifar10", "--layout", "python", "--data-dir", str(tmp_path),
                 "--no-download"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("jaxviz evaluate: error: "), err
    assert str(folder / "test_batch") in err and "system" in err and "Traceback" not in err
    assert not pwned.exists()


class BadCodec:
    """Pickles as a call of an allowed global with bad arguments: _codecs.encode -> LookupError."""

    def __reduce__(self):
        return (codecs.encode, ("x", "no-such-codec"))


@pytest.mark.parametrize("payload", [pickle.dumps({b"data": BadCodec()}, protocol=2), b"\x80\x02}q\x00(X", b"garbage", b""],
                         ids=["lookup-error", "truncated", "garbage", "empty"])
def test_every_unreadable_pickle_is_a_value_error(tmp_path, records, payload):
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match="corrupt pickle") as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False, trust_unverified_pickle=True)
    assert str(folder / "test_batch") in str(e.value)


@pytest.mark.parametrize("meta, words", [
    ({b"label_names": 5}, ["b'label_names'", "int"]),
    ({b"label_names": [b"\xff\xfe"]}, ["UTF-8"]),
])
def test_bad_python_meta_is_a_value_error(tmp_path, records, meta, words):
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(ValueError) as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False, trust_unverified_pickle=True)
    msg = str(e.value)
    assert str(folder / "batches.meta") in msg and all(w in msg for w in words), msg


def test_bad_python_labels_are_a_value_error(tmp_path, records):
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch[b"labels"] = ["cat"] * N_PER_FILE
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="b'labels'") as e:
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False, trust_unverified_pickle=True)
    assert str(folder / "test_batch") in str(e.value)


def test_binary_meta_not_utf8_is_a_value_error(tmp_path, records):
    folder = write_binary_folder(tmp_path / BIN_FOLDER, records)
    (folder / "batches.meta.txt").write_bytes(b"\xff\xfe\x00cat\n")
    with pytest.raises(ValueError, match="UTF-8") as e:
        load_cifar10("test", data_dir=tmp_path, download=False)
    assert str(folder / "batches.meta.txt") in str(e.value)


def test_corrupt_pickle(tmp_path, records):
    folder = write_python_folder(tmp_path / PY_FOLDER, records)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10("test", data_dir=tmp_path, layout="python", download=False,
                     trust_unverified_pickle=True)


# --- arguments and directories ---------------------------------------------------

@pytest.mark.parametrize("kwargs, arg, expected", [
    (dict(split="validation"), "split", ["'train'", "'test'"]),
    (dict(split="Test"), "split", ["'train'", "'test'"]),
    (dict(layout="matlab"), "layout", ["'binary'", "'python'"]),
    (dict(md5="xyz"), "md5", ["32 hex digits"]),
])
def test_bad_arguments(tmp_path, kwargs, arg, expected):
    args = {"split": "test", "data_dir": tmp_path, "download": False, **kwargs}
    with pytest.raises(ValueError) as e:
        load_cifar10(args.pop("split"), **args)
    msg = str(e.value)
    assert msg.startswith(f"{arg}:") and repr(kwargs[arg]) in msg
    assert all(x in msg for x in expected)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("JAXVIZ_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "jaxviz"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, per the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "jaxviz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "jaxviz"
    assert not (tmp_path / "home").exists()  # not created
