"""The jaxviz command line on a tiny weights file and tiny data (no network)."""

import json
import os
import subprocess
import sys
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
    for c, name in enumerate(jaxviz.CIFAR10_CLASSES[:3]):
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


def test_evaluate_cifar10_json_matches_independent_computation(setup, capsys):
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
def test_user_errors_exit_2_with_a_message(setup, capsys, args, words):
    extra = ["--weights", setup["weights"]] + (["--data", "folder", "--data-dir", setup["folder"]]
                                              if args[0] != "filters" else [])
    code, _, err = run(capsys, *args, *extra, "--out", setup["root"] / "err")
    assert code == 2
    assert words in err and "Traceback" not in err


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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "jaxviz.cli", "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("jaxviz ")
