"""Dataset runs on awkward folders and damaged stores (issue 16): paths with '..', folders that are not runs,
two writers, missing arrays, garbled chunks and JSON files, an oversized step, the dataset-mean fill, seeds, and
the command line's messages and stdout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxviz
from jaxviz._io import path_lock

from conftest import assert_one_line_error, make_uint8_images, write_tiny_cli_setup

ROOT = Path(__file__).resolve().parents[1]
CLASSES = tuple("abcdefghij")
OPTIONS = dict(layer="fc1", window=8, stride=8, images_per_step=4, k=2, progress=False)


@pytest.fixture(scope="module")
def network(tiny_model, tiny_variables):
    return jaxviz.from_cnn(tiny_model, tiny_variables, class_names=CLASSES)


@pytest.fixture(scope="module")
def images():
    return make_uint8_images(6, seed=7)  # 2 steps of 4, the last padded


@pytest.fixture(scope="module")
def reference(network, images, tmp_path_factory):
    """The arrays of the undisturbed run."""
    run = jaxviz.run_dataset(network, images, tmp_path_factory.mktemp("reference") / "run", **OPTIONS)
    return dict(run.aggregates)


def _same_arrays(run, reference) -> None:
    """Same program, same inputs: bit for bit."""
    arrays = run.aggregates
    assert sorted(arrays) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)


def _complete_run(network, images, out: Path) -> Path:
    assert jaxviz.run_dataset(network, images, out, **OPTIONS).complete
    return out


def _rerun(network, images, out: Path, reference, **options):
    """Run again into ``out``: complete, with the undisturbed run's arrays."""
    run = jaxviz.run_dataset(network, images, out, **{**OPTIONS, **options})
    assert run.complete
    _same_arrays(run, reference)
    return run


# ------------------------------------------------------------------ 2. paths with '..'


def test_paths_with_dotdot_are_resolved(network, images, reference, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    run = jaxviz.run_dataset(network, images, tmp_path / "sub" / ".." / "run", **OPTIONS)
    assert run.complete and run.path == (tmp_path / "run").resolve()
    _same_arrays(run, reference)
    monkeypatch.chdir(tmp_path / "sub")
    again = jaxviz.open_run("../run")
    assert again.complete and again.path.is_absolute()
    _same_arrays(again, reference)
    relative = jaxviz.run_dataset(network, images, "../new/../deep/er/run", **OPTIONS)  # parents created
    assert relative.complete and relative.path == (tmp_path / "deep" / "er" / "run").resolve()
    assert not (tmp_path / "new").exists()


def test_a_start_that_fails_to_write_leaves_no_folder(network, images, tmp_path, monkeypatch):
    def full_disk(root, name, *args, **kwargs):
        raise jaxviz.RunStoreError(f"could not create {root}/arrays/{name}: No space left on device")

    monkeypatch.setattr(jaxviz.runs.store, "create_array", full_disk)
    with pytest.raises(jaxviz.RunStoreError, match="No space left.*make room"):
        jaxviz.run_dataset(network, images, tmp_path / "run", **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the folder nor its lock


# ------------------------------------------------------------------ 3. a folder that is not a run


def _users_folder(path: Path) -> dict[str, bytes]:
    (path / "records").mkdir(parents=True)
    (path / "arrays").mkdir()
    files = {"records/thesis.tex": b"chapter 1", "arrays/data.csv": b"1,2,3", "summary.json": b'{"mine": 1}'}
    for name, content in files.items():
        (path / name).write_bytes(content)
    return files


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_never_emptied(network, images, tmp_path, overwrite):
    files = _users_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match=r"^out: refusing to write into .*mine.*not empty.*no jaxviz run"):
        jaxviz.run_dataset(network, images, tmp_path / "mine", overwrite=overwrite, **OPTIONS)
    for name, content in files.items():
        assert (tmp_path / "mine" / name).read_bytes() == content
    assert not (tmp_path / "mine" / "settings.json").exists()


# ------------------------------------------------------------------ 4. one writer per run folder


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(network, images, reference, tmp_path):
    out = _complete_run(network, images, tmp_path / "run")
    settings = jaxviz.open_run(out).settings
    with path_lock(out):  # another run writing there
        for options in (dict(overwrite=True), dict(stride=4, overwrite=True), {}):
            with pytest.raises(BlockingIOError, match=rf"^out: a jaxviz run is in progress in .*pid {os.getpid()}"):
                jaxviz.run_dataset(network, images, out, **{**OPTIONS, **options})
        with pytest.raises(ValueError, match="other settings"):  # refused, as without a lock
            jaxviz.run_dataset(network, images, out, **{**OPTIONS, "stride": 4})
    run = jaxviz.open_run(out)  # untouched
    assert run.complete and run.settings == settings
    _same_arrays(run, reference)


# ------------------------------------------------------------------ 5. damaged stores


@pytest.mark.parametrize("lost", ["unit_mean_map", "base"])
def test_a_missing_array_makes_the_run_incomplete_and_the_same_command_recomputes_it(
        network, images, reference, tmp_path, lost):
    out = _complete_run(network, images, tmp_path / "run")
    shutil.rmtree(out / "arrays" / lost)
    assert not jaxviz.open_run(out).complete
    assert _rerun(network, images, out, reference).summary["images_this_run"] == len(images)


@pytest.mark.parametrize("overwrite", [False, True])
def test_settings_without_arrays_or_records_can_be_run_again(network, images, reference, tmp_path, overwrite):
    out = _complete_run(network, images, tmp_path / "run")
    shutil.rmtree(out / "arrays")
    shutil.rmtree(out / "records")
    _rerun(network, images, out, reference, overwrite=overwrite)


def test_a_garbled_chunk_is_named_and_overwrite_repairs_it(network, images, reference, tmp_path):
    out = _complete_run(network, images, tmp_path / "run")
    chunks = sorted(p for p in (out / "arrays" / "base").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks
    chunks[0].write_bytes(b"\x00garbage" * 3)
    with pytest.raises(ValueError) as error:
        _ = jaxviz.open_run(out).aggregates
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    assert "arrays/base" in message and "overwrite=True" in message, message
    _rerun(network, images, out, reference, overwrite=True)


# ------------------------------------------------------------------ 8. a step larger than the dataset


def test_a_step_larger_than_the_dataset_is_capped(network, images, tmp_path):
    whole = jaxviz.run_dataset(network, images, tmp_path / "whole", **{**OPTIONS, "images_per_step": len(images)})
    big = jaxviz.run_dataset(network, images, tmp_path / "big", **{**OPTIONS, "images_per_step": 10**4})
    assert big.complete and big.settings["images_per_step"] == len(images) and big.summary["steps"] == 1
    assert big.settings == whole.settings
    _same_arrays(big, dict(whole.aggregates))
    again = jaxviz.run_dataset(network, images, tmp_path / "big", **{**OPTIONS, "images_per_step": 10**4})
    assert again.summary == big.summary  # the same command matches the stored settings: nothing to do


# ------------------------------------------------------------------ 10. damaged settings.json / summary.json


@pytest.mark.parametrize("content", [b'{"format": 1, "method": ', b"[1, 2]", b"\xff\xfe"])
def test_damaged_settings_are_named_and_overwrite_recovers(network, images, reference, tmp_path, content):
    out = _complete_run(network, images, tmp_path / "run")
    (out / "settings.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"^path: .*settings\.json is damaged.*overwrite=True"):
        jaxviz.open_run(out)
    with pytest.raises(ValueError, match=r"^out: .*settings\.json is damaged.*overwrite=True"):
        jaxviz.run_dataset(network, images, out, **OPTIONS)
    _rerun(network, images, out, reference, overwrite=True)


def test_a_damaged_summary_does_not_hide_the_arrays(network, images, reference, tmp_path):
    out = _complete_run(network, images, tmp_path / "run")
    (out / "summary.json").write_text('{"seconds": ')
    with pytest.warns(UserWarning, match=r"summary\.json is damaged"):
        run = jaxviz.open_run(out)
    assert run.complete and run.summary is None
    _same_arrays(run, reference)


# ------------------------------------------------------------------ 15. seeds; open_run's argument


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_rise_seed_outside_uint32_is_refused(network, images, tmp_path, seed):
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 4294967295\]"):
        jaxviz.run_dataset(network, images, tmp_path / "run", method="rise", num_masks=4, cells=4, seed=seed,
                           **OPTIONS)
    assert not (tmp_path / "run").exists()


def test_open_run_names_path_for_a_file_or_a_non_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="^path: expected a run directory.*is a file"):
        jaxviz.open_run(tmp_path / "file")
    with pytest.raises(TypeError, match="^path: expected a run directory"):
        jaxviz.open_run(3)


# ------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, tiny_model, tiny_variables):
    root = tmp_path_factory.mktemp("cli-robust")
    weights, folder, _ = write_tiny_cli_setup(root, tiny_model, tiny_variables, per_class=3)
    return {"root": root, "weights": str(weights), "folder": str(folder),
            "common": ["--weights", str(weights), "--data", "folder", "--data-dir", str(folder), "--layer", "fc1",
                       "--window", "8", "--stride", "8", "--images-per-step", "4"]}


def _cli(capsys, *args):
    from jaxviz.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_fill_mean_is_the_dataset_mean_for_occlude_and_attribute(cli_setup, capsys, tmp_path):
    common = cli_setup["common"]
    code, _, err = _cli(capsys, "occlude", "--all", *common, "--fill", "mean", "--out", tmp_path / "occlude")
    assert code == 0, err
    code, _, err = _cli(capsys, "attribute", "--all", "--method", "occlusion", *common, "--fill", "mean",
                        "--out", tmp_path / "attribute")
    assert code == 0, err
    network = jaxviz.load_weights(cli_setup["weights"]).network
    images = jaxviz.load_image_folder(cli_setup["folder"]).images
    expected = np.asarray(network.to_input(images), np.float64).mean((0, 1, 2))
    first_image = np.asarray(network.to_input(images[:1]), np.float64).mean((0, 1, 2))
    assert np.abs(expected - first_image).max() > 1e-3  # the two readings differ on this data
    fills = [np.asarray(jaxviz.open_run(tmp_path / name).settings["fill"]) for name in ("occlude", "attribute")]
    np.testing.assert_array_equal(fills[0], fills[1])
    np.testing.assert_allclose(fills[0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_cli_names_the_options_and_recovers_with_overwrite(cli_setup, capsys, tmp_path, monkeypatch):
    common = cli_setup["common"]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    code, out, err = _cli(capsys, "occlude", "--all", *common, "--out", "../run")  # a path with '..'
    assert code == 0, err
    assert json.loads(out)["run"] == str((tmp_path / "run").resolve())
    code, _, err = _cli(capsys, "occlude", "--all", *common, "--stride", "4", "--out", "../run")
    assert_one_line_error(code, err, "--out:", "other settings", "--overwrite")
    assert "overwrite=True" not in err
    (tmp_path / "run" / "settings.json").write_text("{garbled")
    code, _, err = _cli(capsys, "occlude", "--all", *common, "--out", "../run")
    assert_one_line_error(code, err, "--out:", "settings.json is damaged", "--overwrite")
    code, out, err = _cli(capsys, "occlude", "--all", *common, "--out", "../run", "--overwrite")
    assert code == 0 and json.loads(out)["complete"], err
    files = _users_folder(tmp_path / "mine")
    code, _, err = _cli(capsys, "occlude", "--all", *common, "--out", tmp_path / "mine", "--overwrite")
    assert_one_line_error(code, err, "--out:", "refusing", "no jaxviz run")
    assert all((tmp_path / "mine" / name).read_bytes() == content for name, content in files.items())


@pytest.mark.parametrize("option,value", [("--num-units", "5"), ("--threshold", "0.3"), ("--sigma", "3")])
def test_cli_occlude_all_refuses_the_mask_and_unit_picking_options(capsys, tmp_path, option, value):
    code, _, err = _cli(capsys, "occlude", "--all", option, value, "--out", tmp_path / "o")
    assert_one_line_error(code, err, option, "not with --all")
    assert not (tmp_path / "o").exists()


def _env(devices: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_distributed_without_a_cluster_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxviz.cli", "occlude", "--all", "--distributed", "--out",
                           str(tmp_path / "run")], env=_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "--distributed: no cluster was detected", "--coordinator",
                          "--num-processes", "--process-id")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_two_processes_print_only_the_result_on_stdout(cli_setup, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "jaxviz.cli", "occlude", "--all", *cli_setup["common"],
                               "--out", str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i), "--heartbeat-timeout", "10"],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    record = json.loads(results[0][0])  # the whole of stdout: nothing else is written there
    assert record["complete"] and record["processes"] == 2 and record["multi_process"]
    assert results[1][0] == ""
