"""The jaxviz command line on a tiny weights file and tiny data (no network)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jaxviz
from jaxviz.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model, tiny_variables):
    """A tiny CIFAR-10-shaped weights file, an image folder and an official binary-layout folder."""
    root = tmp_path_factory.mktemp("cli")
    weights = root / "tiny.msgpack"
    jaxviz.save_weights(weights, tiny_model, tiny_variables, metadata={"dataset": "tiny"})
    rng = np.random.default_rng(0)
    folder = root / "images"
    for name in jaxviz.CIFAR10_CLASSES[:3]:
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    records = rng.integers(0, 256, size=(20, 3073), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, size=20)
    cifar = root / "cifar"
    (cifar / "cifar-10-batches-bin").mkdir(parents=True)
    (cifar / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(records.tobytes())
    return {"root": root, "weights": str(weights), "folder": str(folder), "cifar": str(cifar), "records": records,
            "model": tiny_model, "variables": tiny_variables}


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_cifar10_json_matches_independent_computation(setup, capsys, monkeypatch):
    monkeypatch.setattr(jaxviz.data.cifar10, "RECORDS_PER_FILE", 20)  # a tiny fake test_batch.bin
    code, out, _ = run(capsys, "evaluate", "--data", "cifar10", "--data-dir", setup["cifar"], "--no-download",
                       "--weights", setup["weights"], "--json", "--confusion-png", setup["root"] / "cm.png")
    assert code == 0
    report = json.loads(out)
    records = setup["records"]
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    logits = jaxviz.forward(setup["model"], setup["variables"], images.astype(np.float32) / 255)
    predicted = np.asarray(logits).argmax(1)
    assert report["images"] == 20
    assert report["accuracy"] == pytest.approx(float(np.mean(predicted == records[:, 0])))
    cm = np.zeros((10, 10), int)
    for t, p in zip(records[:, 0], predicted):
        cm[t, p] += 1
    assert report["confusion_matrix"] == cm.tolist()
    assert set(report["per_class_accuracy"]) == set(jaxviz.CIFAR10_CLASSES)
    assert (setup["root"] / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_missing_data_is_a_clear_error(setup, capsys):
    code, _, err = run(capsys, "evaluate", "--data", "cifar10", "--data-dir", setup["root"] / "nowhere",
                       "--no-download", "--weights", setup["weights"])
    assert code == 2 and "data_dir" in err and "Traceback" not in err


def test_occlude_top_k_writes_npz_and_overlays(setup, capsys):
    out_dir = setup["root"] / "occ"
    code, out, err = run(capsys, "occlude", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                         setup["weights"], "--units", "1,5", "--k", "3", "--window", "11", "--stride", "8",
                         "--out", out_dir)
    assert code == 0, err
    with np.load(out_dir / "occlusion.npz") as z:
        assert z["grid"].shape == (6, 4, 4, 2)  # 2 units x 3 images, 4x4 positions, kept units
        assert z["pixel"].shape == (6, 32, 32)
        assert z["units"].tolist() == [1, 5]
        assert z["targets"].tolist() == [0, 0, 0, 1, 1, 1]
    assert (out_dir / "heatmaps.png").exists() and (out_dir / "masks.png").exists()


def test_occlude_chosen_images_and_classes(setup, capsys):
    out_dir = setup["root"] / "occ2"
    code, _, err = run(capsys, "occlude", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--images", "0,5", "--layer", "logits", "--classes", "cat,airplane",
                       "--fill", "blur", "--anchor", "valid", "--window", "8", "--stride", "8", "--out", out_dir)
    assert code == 0, err
    with np.load(out_dir / "occlusion.npz") as z:
        assert z["grid"].shape == (2, 4, 4, 2)
        assert z["units"].tolist() == [3, 0]


@pytest.mark.parametrize("args,words", [
    (["occlude", "--layer", "conv9"], "layer"),
    (["occlude", "--classes", "cat"], "--classes"),
    (["occlude", "--window", "40"], "window"),
    (["topk", "--k", "1000"], "k:"),
    (["filters", "--layer", "fc1"], "not a conv layer"),
])
def test_user_errors_exit_2_with_a_message(setup, capsys, tmp_path, args, words):
    extra = ["--weights", setup["weights"]] + (["--data", "folder", "--data-dir", setup["folder"]]
                                              if args[0] != "filters" else [])
    code, _, err = run(capsys, *args, *extra, "--out", tmp_path / "err")
    _one_line_error(code, err, words)
    assert not (tmp_path / "err").exists()  # nothing is created for a run that cannot start


def test_small_commands_write_their_outputs(setup, capsys):
    w, d, r = setup["weights"], ["--data", "folder", "--data-dir", setup["folder"]], setup["root"]
    assert run(capsys, "filters", "--weights", w, "--layer", "conv2", "--out", r / "f.png")[0] == 0
    assert run(capsys, "activations", *d, "--weights", w, "--images", "0,1", "--out", r / "a.png")[0] == 0
    code, out, _ = run(capsys, "topk", *d, "--weights", w, "--k", "2", "--num-units", "2", "--out", r / "top")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = run(capsys, "tsne", *d, "--weights", w, "--perplexity", "3", "--max-iter", "300",
                       "--out", r / "t.png")
    assert code == 0 and set(json.loads(out)["knn_agreement"]) == set(jaxviz.CIFAR10_CLASSES[:3])
    code, out, _ = run(capsys, "summary", "--weights", w)
    assert code == 0 and "fc1" in out
    for f in ("f.png", "a.png", "top/topk.png", "t.png"):
        assert (r / f).read_bytes()[:4] == b"\x89PNG", f


def test_report_command(setup, capsys):
    out_dir = setup["root"] / "report"
    code, out, err = run(capsys, "report", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                         setup["weights"], "--k", "2", "--num-units", "2", "--tsne-points", "12", "--tsne-iter",
                         "300", "--window", "11", "--stride", "8", "--out", out_dir)
    assert code == 0, err
    assert (out_dir / "index.html").exists() and "wrote" in out
    (setup["root"] / "afile").write_text("x")
    code, _, err = run(capsys, "report", "--out", setup["root"] / "afile")
    assert code == 2 and "out_dir" in err


def test_train_writes_loadable_weights(setup, capsys):
    out = setup["root"] / "trained.msgpack"
    code, stdout, err = run(capsys, "train", "--data", "folder", "--data-dir", setup["folder"], "--epochs", "1",
                            "--batch-size", "4", "--checkpoint-dir", setup["root"] / "ckpt", "--out", out)
    assert code == 0, err
    assert len(json.loads(stdout)["history"]) == 1
    loaded = jaxviz.load_weights(out)
    assert loaded.class_names == jaxviz.CIFAR10_CLASSES[:3]


def test_console_script_entry_point():
    # the `jaxviz` script that `pip install` writes (pyproject's [project.scripts]), not `python -m`
    beside = Path(sys.executable).parent / ("jaxviz.exe" if os.name == "nt" else "jaxviz")
    script = str(beside) if beside.is_file() else shutil.which("jaxviz")
    assert script, "the jaxviz console script is not installed: run pip install -e ."
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("jaxviz "), out.stderr
    bad = subprocess.run([script, "topk", "--num-units", "0"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written


def _one_line_error(code, err, *words):
    """Exit 2 and one error line, last on stderr (progress bars may come before it), no traceback."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and sum("error:" in line for line in lines) == 1, err
    assert "error:" in lines[-1], err
    for word in words:
        assert word in lines[-1], lines[-1]


@pytest.mark.parametrize("command", ["topk", "occlude"])
@pytest.mark.parametrize("count", ["0", "-1"])
def test_non_positive_num_units_is_refused(setup, capsys, tmp_path, command, count):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--data", "folder", "--data-dir", str(setup["folder"]), "--weights", str(setup["weights"]),
              "--num-units", count, "--out", str(out)])
    _one_line_error(exit_info.value.code, capsys.readouterr().err, "--num-units", "positive int")
    assert not out.exists()


def test_too_many_units_for_a_figure_is_refused(setup, capsys, tmp_path):
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--layer", "flatten", "--units", ",".join(str(u) for u in range(17)),
                       "--k", "2",
                       "--out", tmp_path / "t")
    _one_line_error(code, err, "at most 16")


def test_activation_channels_out_of_range(setup, capsys, tmp_path):
    code, _, err = run(capsys, "activations", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--channels", "999", "--out", tmp_path / "a.png")
    _one_line_error(code, err, "--channels", "999")
    assert not (tmp_path / "a.png").exists()


@pytest.fixture(scope="module")
def folder_64(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    for name in jaxviz.CIFAR10_CLASSES[:2]:
        (root / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("command", [["evaluate"], ["topk", "--k", "1"], ["occlude", "--images", "0"],
                                     ["report", "--k", "1"]])
def test_images_of_another_size_give_one_line(setup, folder_64, capsys, tmp_path, command):
    extra = [] if command[0] == "evaluate" else ["--out", tmp_path / "out"]
    code, _, err = run(capsys, *command, "--data", "folder", "--data-dir", folder_64, "--weights", setup["weights"],
                       *extra)
    _one_line_error(code, err, "32x32", "64x64")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fill", ["abc", "1,2", "nan"])
def test_bad_fill_names_the_option(setup, capsys, tmp_path, fill):
    code, _, err = run(capsys, "occlude", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--images", "0", "--fill", fill, "--out", tmp_path / "o")
    _one_line_error(code, err, "--fill")
    assert not (tmp_path / "o").exists()


def test_a_file_where_the_output_directory_should_be(setup, capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--units", "1", "--k", "2", "--out", tmp_path / "taken")
    _one_line_error(code, err, "--out", "is a file")
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--units", "1", "--k", "2", "--out", tmp_path / "taken" / "sub")
    _one_line_error(code, err, "--out", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")  # the next test covers root
def test_unwritable_outputs_fail_before_the_work(setup, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "evaluate", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                           setup["weights"], "--confusion-png", locked / "cm.png")
        _one_line_error(code, err, "--confusion-png", "not writable")
    finally:
        locked.chmod(0o700)


def test_unwritable_confusion_png_fails_before_evaluating(setup, capsys, tmp_path, monkeypatch):
    # as root os.access says yes everywhere; a directory at the file's path fails for everyone
    calls = []
    monkeypatch.setattr(jaxviz, "predict", lambda *a, **k: calls.append(1))
    (tmp_path / "cm.png").mkdir()
    code, _, err = run(capsys, "evaluate", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--confusion-png", tmp_path / "cm.png")
    _one_line_error(code, err, "--confusion-png", "is a directory")
    assert calls == []


def test_main_installs_a_sigterm_handler_that_exits_through_cleanup(monkeypatch):
    seen = {}
    monkeypatch.setattr(jaxviz.cli, "cmd_summary", lambda args: seen.setdefault("handler", signal.getsignal(15)))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["summary"]) == 0
    assert seen["handler"] is jaxviz.cli._terminate
    assert signal.getsignal(signal.SIGTERM) is before  # restored afterwards


def test_sigterm_during_an_atomic_write_leaves_no_temporary_file(tmp_path):
    script = textwrap.dedent("""
        import signal, sys, time
        import jaxviz
        from jaxviz.cli import _terminate
        signal.signal(signal.SIGTERM, _terminate)
        with jaxviz.atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    target = tmp_path / "out.png"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file exists now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(tmp_path.iterdir()) == []
