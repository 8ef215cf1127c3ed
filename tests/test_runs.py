"""Dataset runs (jaxviz.runs): aggregates against numpy reductions of the grid, flat memory, resume after a
real kill -9, 2 processes against 1, a dead process, a full disk, corrupt records, the CLI and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxviz
from jaxviz.runs import store

from conftest import assert_one_line_error, make_uint8_images, without_compilation_cache, write_tiny_cli_setup
from numerics import assert_close

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "run_worker.py"
CLASSES = tuple("abcdefghij")
# the worker's run: 24 images in 6 steps of 4 (the last full), tiny CNN, fc1's 16 units, every map kept
WORKER_RUN = {"layer": "fc1", "window": 8, "stride": 6, "images_per_step": 4, "keep_grid": True, "k": 3}
STEPS = 6


@pytest.fixture(scope="module")
def network(tiny_model, tiny_variables):
    return jaxviz.from_cnn(tiny_model, tiny_variables, class_names=CLASSES)


def _arrays(path) -> dict[str, np.ndarray]:
    run = jaxviz.open_run(path)
    arrays = dict(run.aggregates)
    if run.grid is not None:
        arrays["grid"] = np.asarray(run.grid.read().result())
    return arrays


def assert_same_store(a, b) -> None:
    """Every array of two runs bit for bit, and the same settings."""
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert jaxviz.open_run(a).settings == jaxviz.open_run(b).settings


# ------------------------------------------------------------------ aggregates against the grid


def _reference_grid(network, x, method, units):
    f = network.score_fn("fc1")
    if method == "occlusion":
        return jaxviz.occlude(f, x, params=network.variables, window=8, stride=6, units=units, fill="blur").grid
    if method == "ablation":
        a = jaxviz.feature_ablation(f, x, params=network.variables, units=units, fill="blur",
                                    segments=jaxviz.grid_segments(32, 32, cells=4))
        return a.scores.reshape(len(x), 4, 4, -1)
    return jaxviz.rise(f, x, params=network.variables, units=units, num_masks=12, cells=4, fill="blur").maps


@pytest.mark.parametrize("method", ["occlusion", "ablation", "rise"])
def test_aggregates_equal_numpy_reductions_of_the_grid(network, tmp_path, method):
    images = make_uint8_images(11, seed=3)  # 3 steps of 4, the last padded
    units = [5, 0, 9, 3]
    run = jaxviz.run_dataset(network, images, tmp_path / "run", method=method, layer="fc1", units=units,
                             window=8, stride=6, segments=4, num_masks=12, cells=4, fill="blur", k=3,
                             images_per_step=4, keep_grid=True, progress=False)
    assert run.complete and run.summary["images_this_run"] == 11
    a = run.aggregates
    grid = np.asarray(run.grid.read().result())
    x = network.to_input(images)
    base = np.asarray(jax.jit(network.score_fn("fc1"))(network.variables, x))[:, units]
    assert_close(a["base"], base)
    assert_close(grid, _reference_grid(network, x, method, units), scale=base)
    np.testing.assert_array_equal(a["predicted"], np.asarray(jax.jit(network.score_fn("logits"))(
        network.variables, x)).argmax(1))
    flat = grid.reshape(11, -1, len(units))
    np.testing.assert_array_equal(a["max_drop"], flat.max(1))
    np.testing.assert_array_equal(a["max_drop_position"],
                                  np.stack(np.unravel_index(flat.argmax(1), grid.shape[1:3]), -1))
    topk = np.argsort(-a["base"], axis=0, kind="stable")[:3].T
    np.testing.assert_array_equal(a["topk_images"], topk)
    np.testing.assert_array_equal(a["topk_scores"], np.take_along_axis(a["base"].T, topk, 1))
    per_unit = np.stack([grid[topk[u], :, :, u].mean(0) for u in range(len(units))])
    assert_close(a["unit_mean_map"], per_unit, scale=grid)
    counts = np.bincount(a["predicted"], minlength=10)
    np.testing.assert_array_equal(a["class_counts"], counts)
    per_class = np.stack([grid[a["predicted"] == c].mean(0).transpose(2, 0, 1) if counts[c]
                          else np.zeros(a["class_mean_map"].shape[1:]) for c in range(10)])
    assert_close(a["class_mean_map"], per_class, scale=grid)


class Recording:
    """A dataset that records the rows of every read and the device bytes alive at that moment."""

    def __init__(self, images):
        self.data, self.shape, self.dtype = images, images.shape, images.dtype
        self.rows, self.live = [], []

    def __getitem__(self, index):
        self.rows.append(index.stop - index.start)
        self.live.append(sum(a.nbytes for a in jax.live_arrays()))
        return self.data[index]


def test_streaming_memory_is_flat_by_design(network, tmp_path):
    """Reads are blocks, and the device holds the same bytes at every read whatever N (no timing)."""
    small, large = Recording(make_uint8_images(16, seed=4)), Recording(make_uint8_images(48, seed=4))
    for name, source in (("small", small), ("large", large)):
        jaxviz.run_dataset(network, source, tmp_path / name, layer="fc1", window=8, stride=6, images_per_step=4,
                           progress=False)
    assert max(large.rows) <= 4 and max(small.rows) <= 4
    assert len(large.rows) == 2 * 48 // 4 + 2  # each block once per pass, plus the two fingerprint rows
    # device memory at each read: params, the masks, the running sums and at most two steps in flight; 4 steps
    # reach the steady state, 12 stay in it
    assert max(large.live) <= max(small.live), (small.live, large.live)


def test_second_run_does_not_retrace(network, tmp_path):
    from jaxviz.runs.program import step_program

    images = make_uint8_images(6, seed=4)
    options = dict(layer="fc1", window=8, stride=6, images_per_step=4, progress=False)
    jaxviz.run_dataset(network, images, tmp_path / "a", **options)
    program = step_program.cache_info()
    jaxviz.run_dataset(network, images, tmp_path / "b", **options)
    assert step_program.cache_info().misses == program.misses
    assert_same_store(tmp_path / "a", tmp_path / "b")


def test_other_settings_are_refused_unless_overwrite(network, tmp_path):
    images = make_uint8_images(6, seed=4)
    run = jaxviz.run_dataset(network, images, tmp_path / "run", layer="fc1", window=8, stride=6,
                             images_per_step=4, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(.*stride.*\).*overwrite"):
        jaxviz.run_dataset(network, images, tmp_path / "run", layer="fc1", window=8, stride=4, images_per_step=4,
                           progress=False)
    with pytest.raises(ValueError, match="data_fingerprint"):  # other images, same shape
        jaxviz.run_dataset(network, images[::-1].copy(), tmp_path / "run", layer="fc1", window=8, stride=6,
                           images_per_step=4, progress=False)
    again = jaxviz.run_dataset(network, images, tmp_path / "run", layer="fc1", window=8, stride=6,
                               images_per_step=4, progress=False)  # finished: nothing to do
    assert again.summary == run.summary
    new = jaxviz.run_dataset(network, images, tmp_path / "run", layer="fc1", window=8, stride=4,
                             images_per_step=4, progress=False, overwrite=True)
    assert new.settings["stride"] == [4, 4] and new.complete


class Failing(Recording):
    """Raises on the ``fail_at``-th read: a crash at a known point (reads: 2 fingerprints, pass 1, pass 2)."""

    def __init__(self, images, fail_at):
        super().__init__(images)
        self.fail_at = fail_at

    def __getitem__(self, index):
        if len(self.rows) == self.fail_at:
            raise RuntimeError("crash")
        return super().__getitem__(index)


def test_corrupt_completion_record_is_detected_and_its_steps_recomputed(network, tmp_path, capsys):
    images = make_uint8_images(20, seed=6)  # 5 steps
    options = dict(layer="fc1", window=8, stride=6, images_per_step=4, progress=False, keep_grid=True)
    jaxviz.run_dataset(network, images, tmp_path / "whole", **options)
    with pytest.raises(RuntimeError, match="crash"):  # dies reading pass 2's step 3: steps 0..1 recorded
        jaxviz.run_dataset(network, Failing(images, 2 + 5 + 3), tmp_path / "run", **options)
    records = sorted((tmp_path / "run" / "records").glob("record-*.npz"))
    # pass 2's records are named 5 + the next step; step 2 was in flight, unrecorded
    assert [r.name for r in records] == ["record-000000006.npz", "record-000000007.npz"]
    records[-1].write_bytes(records[-1].read_bytes()[:-40] + b"\0" * 40)  # garbled: its checksum fails
    run = jaxviz.run_dataset(network, images, tmp_path / "run", **options)
    assert "corrupt completion record(s) record-000000007.npz" in capsys.readouterr().err
    assert run.summary["resumed_at"] == {"pass": 2, "step": 1}  # the step after the last valid record
    assert run.summary["images_this_run"] == 20 - 4
    assert_same_store(tmp_path / "whole", tmp_path / "run")


# ------------------------------------------------------------------ processes: kill -9, 2 processes, faults


def _env(devices: int = 1) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _worker(out, devices: int = 1, **options) -> subprocess.Popen:
    options = {"n": 24, "run": WORKER_RUN, **options}
    env = without_compilation_cache(_env(devices)) if "limit_bytes" in options else _env(devices)
    return subprocess.Popen([sys.executable, str(WORKER), str(out), json.dumps(options)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if proc.returncode == 0 and lines else None, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(out, n: int = 2, devices: int = 2, per_process: dict | None = None, **options):
    port = _free_port()
    return [_worker(out, devices, coordinator=f"127.0.0.1:{port}", num_processes=n, process_id=i,
                    **options, **(per_process or {}).get(i, {})) for i in range(n)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted run, in one process with one device."""
    out = tmp_path_factory.mktemp("whole") / "run"
    code, result, err = _finish(_worker(out))
    assert code == 0 and result["complete"], err
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The same run as 2 processes on localhost, each with 2 devices."""
    out = tmp_path_factory.mktemp("two") / "run"
    results = [_finish(p) for p in _processes(out)]
    for code, result, err in results:
        assert code == 0 and result["complete"], err
    assert results[0][1]["summary"]["processes"] == 2 and results[0][1]["summary"]["devices"] == 4
    return out


def _wait_for_record(out: Path, seq: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "records" / f"record-{seq:09d}.npz").exists():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    raise AssertionError(f"no record {seq} in {timeout} s")


# record names: pass 1, the next step; pass 2, STEPS + the next step
@pytest.mark.slow
@pytest.mark.parametrize("point,seq", [("pass 1, after 2 steps", 2), ("pass 2, after 3 steps", STEPS + 3)])
def test_resume_after_kill_9_gives_the_same_store(one_process, tmp_path, point, seq):
    out = tmp_path / "run"
    proc = _worker(out, delay=0.3)  # a slow disk, so the kill lands mid-run
    _wait_for_record(out, seq, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not jaxviz.open_run(out).complete
    code, result, err = _finish(_worker(out))  # the same command again
    assert code == 0 and result["complete"], err
    resumed = result["summary"]["resumed_at"]
    # nothing recorded is recomputed: it resumes at or after the step the kill followed
    assert resumed["pass"] == (1 if seq <= STEPS else 2)
    assert resumed["step"] >= (seq if seq <= STEPS else seq - STEPS)
    assert_same_store(one_process, out)


@pytest.mark.slow
def test_two_processes_equal_one(one_process, two_processes):
    one, two = _arrays(one_process), _arrays(two_processes)
    for name in ("predicted", "topk_images", "class_counts"):
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    scale = one["base"]
    for name in ("base", "max_drop", "grid", "unit_mean_map", "class_mean_map", "topk_scores"):
        assert_close(two[name], one[name], scale=scale, err_msg=name)
    # each maximum's position holds the maximum (a tie may pick another cell in another program)
    flat = two["grid"].reshape(24, -1, 16)
    position = np.ravel_multi_index(tuple(np.moveaxis(two["max_drop_position"], -1, 0)), two["grid"].shape[1:3])
    np.testing.assert_array_equal(np.take_along_axis(flat, position[:, None], 1)[:, 0], two["max_drop"])


@pytest.mark.slow
def test_a_dead_process_stops_the_others_and_the_rerun_resumes(two_processes, tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    results = [_finish(p, timeout=120) for p in _processes(out, per_process={1: {"die_at_step": 3}},
                                                           heartbeat_timeout=5)]
    assert time.monotonic() - start < 100  # JAX's heartbeat timeout, not a hang
    (code0, _, err0), (code1, _, _) = results
    assert code1 == -signal.SIGKILL and code0 != 0
    assert "another task died" in err0 or "unhealthy" in err0, err0[-2000:]
    results = [_finish(p) for p in _processes(out)]
    for code, result, err in results:
        assert code == 0 and result["complete"], err
    assert results[0][1]["summary"]["resumed_at"] == {"pass": 1, "step": 3}
    assert_same_store(two_processes, out)


@pytest.mark.slow
def test_an_exception_in_one_process_stops_the_others(tmp_path):
    """A process that raises leaves; the others, waiting in a collective, stop after the timeouts, not never."""
    start = time.monotonic()
    results = [_finish(p, timeout=120) for p in _processes(tmp_path / "run", per_process={1: {"raise_at_step": 3}},
                                                           heartbeat_timeout=5)]
    assert time.monotonic() - start < 100
    (code0, _, err0), (code1, _, err1) = results
    assert "RuntimeError: the disk went away" in err1
    assert code0 != 0 and ("another task died" in err0 or "unhealthy" in err0), err0[-2000:]


@pytest.mark.slow
def test_a_full_disk_fails_clearly_and_keeps_the_completed_steps(one_process, tmp_path):
    out = tmp_path / "run"
    code, _, err = _finish(_worker(out, limit_at_step=3, limit_bytes=600))  # ulimit -f, mid-run
    assert code != 0
    assert "RunStoreError: could not write the completion record" in err and "File too large" in err, err[-2000:]
    run = jaxviz.open_run(out)  # what was recorded stays readable
    assert not run.complete and run.aggregates["base"][:12].any()
    seq, record, corrupt = store.latest_record(out)
    assert (seq, corrupt) == (3, []) and int(record["step"]) == 3
    code, result, err = _finish(_worker(out))
    assert code == 0 and result["summary"]["resumed_at"] == {"pass": 1, "step": 3}, err
    assert_same_store(one_process, out)


# ------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, tiny_model, tiny_variables):
    root = tmp_path_factory.mktemp("cli-runs")
    weights, folder, _ = write_tiny_cli_setup(root, tiny_model, tiny_variables, per_class=3)
    return {"root": root, "weights": str(weights), "folder": str(folder)}


def _cli(capsys, *args):
    from jaxviz.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_occlude_all_equals_the_api(cli_setup, capsys, tmp_path):
    common = ["--weights", cli_setup["weights"], "--data", "folder", "--data-dir", cli_setup["folder"]]
    code, out, err = _cli(capsys, "occlude", "--all", *common, "--layer", "fc1", "--units", "1,4", "--window", "8",
                          "--stride", "8", "--k", "2", "--images-per-step", "4", "--keep-grid", "--out",
                          tmp_path / "cli")
    assert code == 0, err
    record = json.loads(out)
    assert record["complete"] and record["images"] == 9 and record["summary"]["forwards"] == 9 * 16
    data = jaxviz.load_image_folder(cli_setup["folder"])
    network = jaxviz.load_weights(cli_setup["weights"]).network
    data = data.with_classes(network.class_names)
    jaxviz.run_dataset(network, data.images, tmp_path / "api", layer="fc1", units=[1, 4], window=8, stride=8, k=2,
                       images_per_step=4, keep_grid=True, progress=False)
    assert_same_store(tmp_path / "api", tmp_path / "cli")
    code, out, err = _cli(capsys, "attribute", "--all", "--method", "rise", "--num-masks", "6", "--cells", "4",
                          *common, "--layer", "fc1", "--units", "2", "--images-per-step", "4", "--out",
                          tmp_path / "rise")
    assert code == 0, err
    assert jaxviz.open_run(tmp_path / "rise").aggregates["unit_mean_map"].shape == (1, 32, 32)


@pytest.mark.parametrize("args,words", [
    (["occlude", "--keep-grid"], ["--keep-grid", "--all"]),
    (["occlude", "--num-processes", "2"], ["--num-processes", "--all"]),
    (["occlude", "--all", "--images", "1,2"], ["--images", "--all"]),
    (["attribute", "--all", "--method", "ig"], ["--method", "perturbation"]),
    (["attribute", "--all", "--method", "occlusion", "--targets", "1"], ["--targets", "--all"]),
    (["attribute", "--method", "occlusion", "--units", "1"], ["--units", "--all"]),
    (["occlude", "--all", "--coordinator", "nohost"], ["--coordinator", "HOST:PORT"]),
    (["occlude", "--all", "--coordinator", "127.0.0.1:1234"], ["--num-processes", "--process-id"]),
    (["occlude", "--all", "--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     ["--process-id", "[0, 1]"]),
    (["occlude", "--all", "--distributed", "--num-processes", "2"], ["--distributed", "not both"]),
])
def test_cli_run_options_are_checked_before_any_work(capsys, tmp_path, args, words):
    out = ["--out", tmp_path / "o"]
    code, _, err = _cli(capsys, *args, *out)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_cli_file_size_limit_gives_one_line_error(cli_setup, tmp_path):
    """``ulimit -f 1`` (1 KiB files): the first record cannot be written; one line says so and how to resume."""
    command = [sys.executable, "-m", "jaxviz.cli", "occlude", "--all", "--weights", cli_setup["weights"], "--data",
               "folder", "--data-dir", cli_setup["folder"], "--layer", "fc1", "--out", str(tmp_path / "run")]
    proc = subprocess.run(["bash", "-c", 'ulimit -f 1 && exec "$@"', "bash", *command], env=without_compilation_cache(_env()),
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "could not write", "File too large", "run the same command")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(network="net"), TypeError, "network"),
    (dict(images=np.zeros((4, 32, 32, 3), np.float32)), TypeError, "uint8"),
    (dict(images=np.zeros((4, 16, 16, 3), np.uint8)), ValueError, "32x32"),
    (dict(images=[1, 2]), TypeError, "images"),
    (dict(method="gradcam"), ValueError, "method"),
    (dict(layer="nope"), ValueError, "layer"),
    (dict(units=[99]), ValueError, "units"),
    (dict(k=0), ValueError, "k"),
    (dict(images_per_step=0), ValueError, "images_per_step"),
    (dict(window=40), ValueError, "window"),
    (dict(method="rise", p=0.0), ValueError, "keep probability"),
    (dict(method="ablation", segments=64), ValueError, "segments"),
    (dict(fill=np.zeros((4, 32, 32, 3))), ValueError, "per-image"),
    (dict(fill="mean"), ValueError, "fill"),
    (dict(keep_grid="yes"), TypeError, "keep_grid"),
    (dict(out=3), TypeError, "out"),
])
def test_bad_input_is_refused_before_any_work(network, tmp_path, kwargs, error, words):
    args = {"network": network, "images": make_uint8_images(4, seed=0), "out": tmp_path / "run", "layer": "fc1"}
    args.update(kwargs)
    with pytest.raises(error, match=words):
        jaxviz.run_dataset(args.pop("network"), args.pop("images"), args.pop("out"), progress=False, **args)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,words", [
    (dict(coordinator="host", num_processes=2, process_id=0), "coordinator: expected HOST:PORT"),
    (dict(coordinator="host"), "coordinator: expected HOST:PORT"),
    (dict(coordinator="host:99999", num_processes=2, process_id=0), "port"),
    (dict(coordinator="host:1234"), "num_processes, process_id: required"),
    (dict(coordinator="host:1234", num_processes=2, process_id=-1), "process_id"),
    (dict(auto=True, num_processes=2), "auto"),
    (dict(coordinator="host:1234", num_processes=0, process_id=0), "num_processes"),
])
def test_initialize_distributed_checks_its_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        jaxviz.initialize_distributed(**kwargs)


def test_one_process_needs_no_runtime():
    assert jaxviz.initialize_distributed() is False
    assert jaxviz.initialize_distributed("127.0.0.1:1234", 1, 0) is False


def test_out_must_be_a_directory(network, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="out: expected a directory"):
        jaxviz.run_dataset(network, make_uint8_images(4, seed=0), tmp_path / "file", layer="fc1", progress=False)


def test_open_run_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no jaxviz run"):
        jaxviz.open_run(tmp_path)
