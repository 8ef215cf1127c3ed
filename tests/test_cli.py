"""The jaxviz command line on a tiny weights file, the example ResNets (--model) and tiny data (no network)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import jaxviz
from jaxviz.cli import main

from conftest import assert_one_line_error, make_tiny_model, write_tiny_cli_setup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model, tiny_variables):
    """A tiny CIFAR-10-shaped weights file, an image folder and an official binary-layout folder."""
    root = tmp_path_factory.mktemp("cli")
    weights, folder, rng = write_tiny_cli_setup(root, tiny_model, tiny_variables, per_class=4)
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
    (["occlude", "--layer", "conv9"], ["--layer: unknown layer 'conv9'"]),
    (["occlude", "--layer", "fc1", "--classes", "cat"], ["--classes"]),  # classes are outputs: --layer logits or none
    (["occlude", "--classes", "cat,zebra"], ["--classes", "'zebra'"]),
    (["occlude", "--window", "40"], ["--window: ", "[1, 32]", "40"]),
    (["occlude", "--images", "0,12"], ["--images: ", "[0, 12)", "12"]),
    (["activations", "--images", "0,-1"], ["--images: ", "[0, 12)", "-1"]),
    (["activations", "--layer", "fc1"], ["--layer: ", "(h, w, channels)", "fc1"]),
    (["topk", "--k", "1000"], ["--k: ", "[1, 12]", "1000"]),
    (["topk", "--layer", "fc1", "--units", "16"], ["--units: ", "[0, 16)", "16"]),
    (["tsne", "--layer", "nope"], ["--layer: unknown layer 'nope'"]),
    (["tsne", "--perplexity", "50"], ["--perplexity: ", "50"]),
    (["filters", "--layer", "fc1"], ["--layer: ", "has no conv kernel"]),
])
def test_user_errors_exit_2_with_a_message(setup, capsys, tmp_path, args, words):
    extra = ["--weights", setup["weights"]] + (["--data", "folder", "--data-dir", setup["folder"]]
                                              if args[0] != "filters" else [])
    code, _, err = run(capsys, *args, *extra, "--out", tmp_path / "err")
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "err").exists()  # nothing is created for a run that cannot start


def test_occlude_chosen_images_need_no_k_that_fits_the_data(setup, capsys, tmp_path):
    """--k is about top-K images: with --images it is not used, so its default (10) may exceed the data."""
    three = setup["root"] / "three"
    for name in jaxviz.CIFAR10_CLASSES[:3]:
        (three / name).mkdir(parents=True)
        shutil.copy(Path(setup["folder"]) / name / "0.png", three / name / "0.png")
    code, out, err = run(capsys, "occlude", "--data", "folder", "--data-dir", three, "--weights", setup["weights"],
                         "--images", "2", "--window", "16", "--stride", "16", "--out", tmp_path / "o")
    assert code == 0, err
    assert json.loads(out)["images"] == 1
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", three, "--weights", setup["weights"],
                       "--out", tmp_path / "t")
    assert_one_line_error(code, err, "--k: ", "[1, 3]", "got 10")  # top-K needs K images


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


@pytest.mark.slow
def test_report_command(setup, capsys):
    out_dir = setup["root"] / "report"
    code, out, err = run(capsys, "report", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                         setup["weights"], "--k", "2", "--num-units", "2", "--tsne-points", "12", "--tsne-iter",
                         "300", "--window", "11", "--stride", "8", "--rise-masks", "64", "--sanity-methods", "none",
                         "--trust-methods", "occlusion,saliency", "--vis-steps", "0", "--out", out_dir)
    # (each section's numbers are checked in test_report.py; here: the command, its options and its folder)
    assert code == 0, err
    assert (out_dir / "index.html").exists() and "wrote" in out
    (setup["root"] / "afile").write_text("x")
    code, _, err = run(capsys, "report", "--out", setup["root"] / "afile")
    assert code == 2 and "out_dir" in err


def test_train_writes_loadable_weights(setup, capsys):
    out = setup["root"] / "trained.msgpack"
    code, stdout, err = run(capsys, "train", "--data", "folder", "--data-dir", setup["folder"], "--epochs", "1",
                            "--batch-size", "4", "--widths", "4,8", "--hidden", "16", "--lr", "0.05",
                            "--checkpoint-dir", setup["root"] / "ckpt", "--out", out)
    assert code == 0, err
    assert len(json.loads(stdout)["history"]) == 1
    loaded = jaxviz.load_weights(out)
    assert loaded.class_names == jaxviz.CIFAR10_CLASSES[:3]
    assert (loaded.model.widths, loaded.model.hidden) == ((4, 8), 16)  # --widths and --hidden were used
    assert [h["epoch"] for h in loaded.metadata["history"]] == [1]


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


@pytest.mark.parametrize("command", ["topk", "occlude"])
@pytest.mark.parametrize("count", ["0", "-1"])
def test_non_positive_num_units_is_refused(setup, capsys, tmp_path, command, count):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--data", "folder", "--data-dir", str(setup["folder"]), "--weights", str(setup["weights"]),
              "--num-units", count, "--out", str(out)])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "--num-units", "positive int")
    assert not out.exists()


def test_too_many_units_for_a_figure_is_refused(setup, capsys, tmp_path):
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--layer", "flatten", "--units", ",".join(str(u) for u in range(17)),
                       "--k", "2",
                       "--out", tmp_path / "t")
    assert_one_line_error(code, err, "--units", "1 to 16", "got 17")


def test_activation_channels_out_of_range(setup, capsys, tmp_path):
    code, _, err = run(capsys, "activations", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--channels", "999", "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, "--channels", "999")
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
    assert_one_line_error(code, err, "32x32", "64x64")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fill", ["abc", "1,2", "nan"])
def test_bad_fill_names_the_option(setup, capsys, tmp_path, fill):
    code, _, err = run(capsys, "occlude", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--images", "0", "--fill", fill, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--fill")
    assert not (tmp_path / "o").exists()


def test_a_file_where_the_output_directory_should_be(setup, capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--units", "1", "--k", "2", "--out", tmp_path / "taken")
    assert_one_line_error(code, err, "--out", "is a file")
    code, _, err = run(capsys, "topk", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--units", "1", "--k", "2", "--out", tmp_path / "taken" / "sub")
    assert_one_line_error(code, err, "--out", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")  # the next test covers root
def test_unwritable_outputs_fail_before_the_work(setup, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "evaluate", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                           setup["weights"], "--confusion-png", locked / "cm.png")
        assert_one_line_error(code, err, "--confusion-png", "not writable")
    finally:
        locked.chmod(0o700)


def test_unwritable_confusion_png_fails_before_evaluating(setup, capsys, tmp_path, monkeypatch):
    # as root os.access says yes everywhere; a directory at the file's path fails for everyone
    calls = []
    monkeypatch.setattr(jaxviz, "layer_features", lambda *a, **k: calls.append(1))
    (tmp_path / "cm.png").mkdir()
    code, _, err = run(capsys, "evaluate", "--data", "folder", "--data-dir", setup["folder"], "--weights",
                       setup["weights"], "--confusion-png", tmp_path / "cm.png")
    assert_one_line_error(code, err, "--confusion-png", "is a directory")
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


# ------------------------------------------------------------------ --model: your own linen or nnx model

EXAMPLES = ROOT / "examples"
LINEN, NNX = f"{EXAMPLES / 'resnet_linen.py'}:build", f"{EXAMPLES / 'resnet_nnx.py'}:build"
MODELS = {"linen": LINEN, "nnx": NNX}
PETS = ("cat", "dog")  # two of the examples' CLASS_NAMES (the CIFAR-10 names)


def import_file(path: str | Path):
    """The module of a .py file (as ``--model`` imports it)."""
    import importlib.util

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"jaxviz_test_{path.stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # linen modules are dataclasses: they look their module up
    spec.loader.exec_module(module)
    return module


def example(name: str):
    """The module ``examples/<name>.py``."""
    return import_file(EXAMPLES / f"{name}.py")


def image_folder(root: Path, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in PETS:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """2 classes x 3 images at 64x64 (the examples' input size) and at 32x32 (for --resize)."""
    root = tmp_path_factory.mktemp("pets")
    return {"64": str(image_folder(root / "64", 64, seed=2)), "32": str(image_folder(root / "32", 32, seed=3))}


def direct_logits(kind: str, images: np.ndarray, variables=None) -> np.ndarray:
    """The example's logits for uint8 images, computed without jaxviz: pixels / 255 through the module."""
    x = images.astype(np.float32) / 255
    if kind == "linen":
        module, built = example("resnet_linen").build()
        return np.asarray(module.apply(built if variables is None else variables, x))
    return np.asarray(example("resnet_nnx").build()(x))


def direct_stage2(kind: str, images: np.ndarray) -> np.ndarray:
    """The example's ``stage2`` activations (N, 32, 32, 32), computed without jaxviz."""
    x = images.astype(np.float32) / 255
    if kind == "linen":
        module, variables = example("resnet_linen").build()
        _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return np.asarray(state["intermediates"]["stage2"]["__call__"][0])
    model = example("resnet_nnx").build()
    return np.asarray(model.stage2(model.stage1(model.stem(x))))


def pet_labels(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """The folder's images and their labels as indices into the examples' CLASS_NAMES."""
    data = jaxviz.load_image_folder(folder)
    return data.images, np.array([jaxviz.CIFAR10_CLASSES.index(data.class_names[i]) for i in data.labels])


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_summary(capsys, kind):
    code, out, err = run(capsys, "summary", "--model", MODELS[kind])
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["stage2"][1:3] == ["Stage", "(None,"] and "32," in rows["stage2"]  # (None, 32, 32, 32)
    assert rows["stem/conv"][-1] == "432"  # 3x3x3x16, no bias
    assert rows["head"][-1] == "650"  # 64 x 10 + 10
    assert "pool" in rows and "stage3/block1/bn2" in rows
    assert rows["Total"] == ["Total", "params:", "176,378"]  # params and batch statistics


def test_model_as_a_dotted_module(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    code, out, err = run(capsys, "summary", "--model", "examples.resnet_linen:build")
    assert code == 0, err
    assert "stage2/block0/proj" in out and "Total params: 176,378" in out


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_topk(pets, capsys, tmp_path, kind):
    out_dir = tmp_path / "top"
    code, out, err = run(capsys, "topk", "--model", MODELS[kind], "--data", "folder", "--data-dir", pets["64"],
                         "--layer", "stage2", "--k", "2", "--num-units", "2", "--out", out_dir)
    assert code == 0, err
    assert len(json.loads(out)) == 2
    record = json.loads((out_dir / "topk.json").read_text())
    assert record["layer"] == "stage2" and len(record["units"]) == 2
    assert all(0 <= u < 32 for u in record["units"])  # stage2 has 32 channels
    images, _ = pet_labels(pets["64"])
    scores = direct_stage2(kind, images).mean(axis=(1, 2))  # a unit's score: its map's mean
    for u in record["units"]:
        assert record["top_indices"][str(u)] == np.argsort(-scores[:, u], kind="stable")[:2].tolist()
        assert record["selectivity"][str(u)]["class"] in PETS
    assert (out_dir / "topk.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_evaluate(pets, capsys, kind):
    code, out, err = run(capsys, "evaluate", "--model", MODELS[kind], "--data", "folder", "--data-dir", pets["64"],
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    images, labels = pet_labels(pets["64"])
    predicted = direct_logits(kind, images).argmax(1)
    assert report["images"] == 6 and report["class_names"] == list(jaxviz.CIFAR10_CLASSES)
    assert report["accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (labels, predicted), 1)
    assert report["confusion_matrix"] == cm.tolist()


@pytest.mark.parametrize("command", [["evaluate", "--json"], ["topk", "--layer", "stage2", "--k", "2", "--num-units", "2"]])
def test_model_resize(pets, capsys, tmp_path, command):
    """32x32 images into the 64x64 model: refused in one line unless --resize is given."""
    extra = [] if command[0] == "evaluate" else ["--out", tmp_path / "out"]
    args = [*command, "--model", LINEN, "--data", "folder", "--data-dir", pets["32"], *extra]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "--data folder", "64x64", "32x32", "--resize")
    assert not (tmp_path / "out").exists()
    code, out, err = run(capsys, *args, "--resize")
    assert code == 0, err
    if command[0] == "evaluate":
        images, labels = pet_labels(pets["32"])
        predicted = direct_logits("linen", jaxviz.resize_images(images, 64, 64)).argmax(1)
        assert json.loads(out)["accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
    else:
        assert len(json.loads(out)) == 2 and (tmp_path / "out" / "topk.png").exists()


def test_model_data_with_classes_the_model_does_not_know(capsys, tmp_path):
    folder = tmp_path / "zoo"
    for name in ("cat", "zebra"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / name / "0.png")
    code, _, err = run(capsys, "evaluate", "--model", LINEN, "--data", "folder", "--data-dir", folder)
    assert_one_line_error(code, err, "--data folder", "['zebra']", "'truck'")


def test_model_without_class_names(pets, capsys, tmp_path):
    """A model without CLASS_NAMES: the analyses use the data's classes; evaluate says why it cannot run."""
    source = model_file(tmp_path, "plain", TINY_LINEN, "INPUT_SHAPE = (8, 8, 3)\n")
    data = ["--data", "folder", "--data-dir", pets["32"], "--resize"]  # 32x32 -> 8x8
    code, out, err = run(capsys, "topk", "--model", f"{source}:build", *data, "--layer", "conv", "--k", "2",
                         "--num-units", "2", "--out", tmp_path / "top")
    assert code == 0, err
    assert {v["class"] for v in json.loads(out).values()} <= set(PETS)
    code, _, err = run(capsys, "evaluate", "--model", f"{source}:build", *data)
    assert_one_line_error(code, err, "--model", "no class names", "CLASS_NAMES")


# --- --weights: a Flax msgpack state dict of the model's variables


def test_model_weights_round_trip(pets, capsys, tmp_path):
    """Save the linen example's variables, make every image a dog, load them with --weights."""
    _, variables = example("resnet_linen").build()
    variables = jax.tree_util.tree_map(np.asarray, variables)  # new dicts: build()'s are not touched
    dog = jaxviz.CIFAR10_CLASSES.index("dog")
    variables["params"]["head"]["bias"] = variables["params"]["head"]["bias"] + np.eye(10, dtype=np.float32)[dog] * 1e3
    path = tmp_path / "dog.msgpack"
    path.write_bytes(flax.serialization.to_bytes(variables))

    network = jaxviz.load_model(LINEN, weights=path)
    np.testing.assert_array_equal(np.asarray(network.variables["params"]["head"]["bias"]),
                                  variables["params"]["head"]["bias"])
    images, labels = pet_labels(pets["64"])
    assert (direct_logits("linen", images, variables).argmax(1) == dog).all()

    code, out, err = run(capsys, "evaluate", "--model", LINEN, "--weights", path, "--data", "folder",
                         "--data-dir", pets["64"], "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [row[dog] for row in report["confusion_matrix"]] == np.bincount(labels, minlength=10).tolist()
    assert report["accuracy"] == 0.5  # the three dogs
    code, out, err = run(capsys, "summary", "--model", LINEN, "--weights", path)
    assert code == 0 and "Total params: 176,378" in out, err


def test_nnx_model_weights_round_trip(pets, capsys, tmp_path):
    """The nnx recipe: msgpack of ``nnx.to_pure_dict(nnx.state(module))``."""
    pure = nnx.to_pure_dict(nnx.state(example("resnet_nnx").build()))
    cat = jaxviz.CIFAR10_CLASSES.index("cat")
    pure["head"]["bias"] = np.asarray(pure["head"]["bias"]) + np.eye(10, dtype=np.float32)[cat] * 1e3
    path = tmp_path / "cat.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(pure))
    code, out, err = run(capsys, "evaluate", "--model", NNX, "--weights", path, "--data", "folder",
                         "--data-dir", pets["64"], "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 0.5  # every image a cat: the three cats


def test_nnx_weights_with_list_items(capsys, tmp_path):
    """nnx lists have int keys, which msgpack keeps; the model's state dict has them as str."""
    source = model_file(tmp_path, "listed", """
        from flax import nnx
        INPUT_SHAPE = (8, 8, 3)
        CLASS_NAMES = ("a", "b")

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.blocks = nnx.List([nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.Conv(4, 4, (3, 3), rngs=rngs)])
                self.head = nnx.Linear(4, 2, rngs=rngs)

            def __call__(self, x):
                for block in self.blocks:
                    x = nnx.relu(block(x))
                return self.head(x.mean((1, 2)))

        def build():
            return Net(nnx.Rngs(0))
    """)
    pure = nnx.to_pure_dict(nnx.state(import_file(source).build()))
    assert set(pure["blocks"]) == {0, 1}
    pure = jax.tree_util.tree_map(lambda a: np.zeros_like(np.asarray(a)), pure)
    pure["head"]["bias"] = np.array([0.0, 5.0], np.float32)
    path = tmp_path / "zeros.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(pure))
    network = jaxviz.load_model(f"{source}:build", weights=path)
    assert network.layer_names == ("blocks/0", "blocks/1", "head")
    np.testing.assert_array_equal(jaxviz.layer_features(network, np.zeros((2, 8, 8, 3), np.uint8)),
                                  [[0.0, 5.0], [0.0, 5.0]])


# --- bad --model / --weights: one line, exit 2, nothing written

def model_file(tmp_path: Path, name: str, *parts: str) -> str:
    """``tmp_path/<name>.py`` made of ``parts`` (each dedented); its path."""
    path = tmp_path / f"{name}.py"
    path.write_text("\n".join(textwrap.dedent(part) for part in parts))
    return str(path)


TINY_LINEN = """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="conv")(x)
            return nn.Dense(2, name="head")(x.mean((1, 2)))

    def build():
        module = Tiny()
        return module, module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
"""


def bad_model(tmp_path: Path, case: str) -> list:
    """The arguments of one bad --model / --weights, and what the error line must name."""
    if case == "no_file":
        return ["--model", "nofile.py:build"], ["--model", "no Python file", "'nofile.py'"]
    if case == "no_attr":
        return ["--model", f"{EXAMPLES / 'resnet_linen.py'}:nope"], ["--model", "no callable 'nope'"]
    if case == "not_callable":
        return ["--model", f"{EXAMPLES / 'resnet_linen.py'}:INPUT_SHAPE"], ["--model", "no callable 'INPUT_SHAPE'",
                                                                           "tuple"]
    if case == "no_colon":
        return ["--model", str(EXAMPLES / "resnet_linen.py")], ["--model", "FILE_OR_MODULE:ATTR", "resnet_linen.py"]
    if case == "no_module":
        return ["--model", "no_such_module_xyz:build"], ["--model", "no module 'no_such_module_xyz'"]
    if case == "import_fails":
        source = model_file(tmp_path, "broken", "import no_such_package_xyz\n")
        return ["--model", f"{source}:build"], ["--model", "importing", "broken.py", "no_such_package_xyz"]
    if case == "factory_raises":
        source = model_file(tmp_path, "raises", """
            INPUT_SHAPE = (8, 8, 3)

            def build():
                raise RuntimeError("no weights here")
        """)
        return ["--model", f"{source}:build"], ["--model", "build() raised RuntimeError: no weights here"]
    if case == "wrong_type":
        source = model_file(tmp_path, "wrong", "INPUT_SHAPE = (8, 8, 3)\n\ndef build():\n    return 42\n")
        return ["--model", f"{source}:build"], ["--model", "build() must return", "jaxviz.Network", "got int"]
    if case == "bad_input_shape":
        source = model_file(tmp_path, "flat", TINY_LINEN, "INPUT_SHAPE = (8, 8)\n")
        return ["--model", f"{source}:build"], ["--model: INPUT_SHAPE: ", "(height, width, channels)", "(8, 8)"]
    if case == "bad_class_names":
        source = model_file(tmp_path, "classes", TINY_LINEN, "INPUT_SHAPE = (8, 8, 3)\nCLASS_NAMES = ('a',)\n")
        return ["--model", f"{source}:build"], ["--model: CLASS_NAMES: ", "2 outputs", "got 1"]
    if case == "does_not_run":  # 4 channels into a conv with 3 input channels
        source = model_file(tmp_path, "rgba", TINY_LINEN, "INPUT_SHAPE = (8, 8, 4)\n")
        return ["--model", f"{source}:build"], ["--model: module: running it on a 8x8x4 input failed with"]
    other = tmp_path / "other.msgpack"  # the variables of another model (the tiny linen one)
    module_source = model_file(tmp_path, "tiny", TINY_LINEN, "INPUT_SHAPE = (8, 8, 3)\n")
    other.write_bytes(flax.serialization.to_bytes(jaxviz.load_model(f"{module_source}:build").variables))
    if case == "weights_of_another_model":
        return ["--model", LINEN, "--weights", other], ["--weights", str(other), "lacks /batch_stats",
                                                        "another model"]
    if case == "weights_of_another_model_nnx":
        return ["--model", NNX, "--weights", other], ["--weights", str(other), "another model"]
    if case == "weights_of_other_shapes":
        _, variables = example("resnet_linen").build()
        variables = jax.tree_util.tree_map(np.asarray, variables)
        variables["params"]["head"]["kernel"] = np.zeros((64, 5), np.float32)
        other.write_bytes(flax.serialization.to_bytes(variables))
        return ["--model", LINEN, "--weights", other], ["--weights", "/params/head/kernel", "(64, 5)", "(64, 10)"]
    if case == "weights_not_msgpack":
        other.write_bytes(b"\x93garbage")
        return ["--model", LINEN, "--weights", other], ["--weights", str(other), "not a Flax msgpack"]
    if case == "weights_of_jaxviz_train":  # a weights file of the built-in CNN, not of this model
        model = make_tiny_model()
        jaxviz.save_weights(other, model, jaxviz.init_variables(model, jax.random.key(0)))
        return ["--model", LINEN, "--weights", other], ["--weights", "jaxviz weights file", "state dict"]
    if case == "weights_missing":
        return ["--model", LINEN, "--weights", tmp_path / "none.msgpack"], ["--weights", "no weights file",
                                                                            "none.msgpack"]
    if case == "weights_of_a_network":
        source = model_file(tmp_path, "net", TINY_LINEN, """
            import jaxviz

            def network():
                return jaxviz.from_linen(*build(), input_shape=(8, 8, 3))
        """)
        return ["--model", f"{source}:network", "--weights", other], ["--weights", "not supported", "jaxviz.Network"]
    raise AssertionError(case)


BAD_MODELS = ["no_file", "no_attr", "not_callable", "no_colon", "no_module", "import_fails", "factory_raises",
              "wrong_type", "bad_input_shape", "bad_class_names", "does_not_run", "weights_of_another_model",
              "weights_of_another_model_nnx", "weights_of_other_shapes", "weights_not_msgpack", "weights_of_jaxviz_train",
              "weights_missing", "weights_of_a_network"]


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_or_weights_is_one_line(pets, capsys, tmp_path, case):
    args, words = bad_model(tmp_path, case)
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "topk", *args, "--data", "folder", "--data-dir", pets["64"], "--out", out_dir)
    assert_one_line_error(code, err, *words)
    assert not out_dir.exists()


@pytest.mark.parametrize("case", ["no_file", "factory_raises", "weights_of_another_model"])
def test_bad_model_in_summary_and_evaluate(pets, capsys, tmp_path, case):
    args, words = bad_model(tmp_path, case)
    assert_one_line_error(*run(capsys, "summary", *args)[::2], *words)
    assert_one_line_error(*run(capsys, "evaluate", *args, "--data", "folder", "--data-dir", pets["64"])[::2], *words)


def test_load_model_api_errors_name_the_option(tmp_path):
    args, _ = bad_model(tmp_path, "factory_raises")
    with pytest.raises(ValueError, match=r"^--model: build\(\) raised RuntimeError"):
        jaxviz.load_model(args[1])
    with pytest.raises(ValueError, match=r"^model: build\(\) raised RuntimeError"):
        jaxviz.load_model(args[1], option="model")


# --- the input size and channels of a --model

GRAY_LINEN = TINY_LINEN.replace("(1, 8, 8, 3)", "(1, 32, 32, 1)")  # a conv on 1 channel
GRAY_CONSTANTS = 'INPUT_SHAPE = (32, 32, 1)\nCLASS_NAMES = ("cat", "dog")\n'


def test_a_one_channel_model_gets_grayscale_images(pets, capsys, tmp_path):
    """RGB folders (and the embedded sample) become BT.601 luma for a model with INPUT_SHAPE (32, 32, 1)."""
    source = model_file(tmp_path, "gray", GRAY_LINEN, GRAY_CONSTANTS)
    code, out, err = run(capsys, "occlude", "--model", f"{source}:build", "--data", "folder", "--data-dir",
                         pets["32"], "--images", "0,4", "--layer", "head", "--window", "16",
                         "--stride", "16", "--out", tmp_path / "occ")
    assert code == 0, err
    rgb = jaxviz.load_image_folder(pets["32"]).images[[0, 4]].astype(np.float64)
    gray = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)[..., None]
    module, variables = import_file(source).build()
    with np.load(tmp_path / "occ" / "occlusion.npz") as z:
        np.testing.assert_allclose(z["base"], np.asarray(module.apply(variables, gray.astype(np.float32) / 255)),
                                   rtol=1e-5, atol=1e-5 * float(np.abs(z["base"]).max()))
    plain = model_file(tmp_path, "plain_gray", GRAY_LINEN, "INPUT_SHAPE = (32, 32, 1)\n")
    code, out, err = run(capsys, "activations", "--model", f"{plain}:build", "--layer", "conv", "--images", "0",
                         "--out", tmp_path / "sample.png")  # the embedded sample
    assert code == 0, err
    assert (tmp_path / "sample.png").read_bytes()[:4] == b"\x89PNG"


def test_a_channel_mismatch_is_said_about_channels(pets, capsys, tmp_path):
    source = model_file(tmp_path, "two", TINY_LINEN.replace("(1, 8, 8, 3)", "(1, 32, 32, 2)"),
                        GRAY_CONSTANTS.replace("(32, 32, 1)", "(32, 32, 2)"))
    for extra in ([], ["--resize"]):
        code, _, err = run(capsys, "evaluate", "--model", f"{source}:build", "--data", "folder", "--data-dir",
                           pets["32"], *extra)
        assert_one_line_error(code, err, "--data folder: ", "takes images with 2 channels", "have 3")
        assert "--resize" not in err


def test_a_model_without_input_shape_takes_the_data_size(pets, capsys, tmp_path):
    """No INPUT_SHAPE: the data's image size (a standard Flax model file); --input-shape overrides."""
    source = model_file(tmp_path, "shapeless", TINY_LINEN)
    module, variables = import_file(source).build()
    for folder, extra, size in ((pets["64"], [], 64), (pets["64"], ["--input-shape", "16,16,3", "--resize"], 16)):
        code, out, err = run(capsys, "topk", "--model", f"{source}:build", "--data", "folder", "--data-dir", folder,
                             "--layer", "head", "--units", "1", "--k", "2", "--out", tmp_path / f"top{size}", *extra)
        assert code == 0, err
        images = jaxviz.resize_images(jaxviz.load_image_folder(folder).images, size, size)
        head = np.asarray(module.apply(variables, images.astype(np.float32) / 255))
        record = json.loads((tmp_path / f"top{size}" / "topk.json").read_text())
        assert record["top_indices"]["1"] == np.argsort(-head[:, 1], kind="stable")[:2].tolist()
    code, _, err = run(capsys, "summary", "--model", f"{source}:build")  # no data to take the size from
    assert_one_line_error(code, err, "--model: ", "shapeless.py", "defines no INPUT_SHAPE", "--input-shape H,W,C")
    code, out, err = run(capsys, "summary", "--model", f"{source}:build", "--input-shape", "8,8,3")
    assert code == 0 and "(None, 8, 8, 4)" in out, err
    code, _, err = run(capsys, "summary", "--input-shape", "8,8,3")
    assert_one_line_error(code, err, "--input-shape: ", "only with --model", "8,8,3")
    with pytest.raises(SystemExit):
        main(["summary", "--model", f"{source}:build", "--input-shape", "8,8"])
    assert "--input-shape: expected H,W,C" in capsys.readouterr().err


def test_report_on_one_class_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    """A model without class names on a folder of one class: the unit study has no classes to compare."""
    folder = tmp_path / "one" / "cat"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    source = model_file(tmp_path, "tiny", TINY_LINEN)
    monkeypatch.setattr(jaxviz, "layer_features", lambda *a, **k: pytest.fail("features were computed"))
    for command in (["report", "--k", "2", "--num-units", "2"], ["topk", "--k", "2", "--num-units", "2"]):
        code, _, err = run(capsys, *command, "--model", f"{source}:build", "--data", "folder", "--data-dir",
                           tmp_path / "one", "--out", tmp_path / "out")
        assert_one_line_error(code, err, "--data folder: ", "at least 2 classes", "'cat'")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,words", [
    (["report", "--k", "50"], ["--k: ", "got 50"]),
    (["report", "--layer", "nope"], ["--layer: ", "'nope'"]),
    (["report", "--units", "99", "--k", "2"], ["--units: ", "[99]"]),
    (["occlude", "--images", "0", "--units", "12"], ["--units: ", "layer logits", "[12]"]),
])
def test_errors_name_the_option(setup, capsys, tmp_path, args, words):
    code, _, err = run(capsys, *args, "--weights", setup["weights"], "--data", "folder", "--data-dir",
                       setup["folder"], "--out", tmp_path / "out")
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out").exists()


def test_occlude_chosen_images_titles_show_label_and_prediction(setup, capsys, tmp_path, monkeypatch):
    from jaxviz import plots

    seen = []
    real = plots.plot_heatmaps
    monkeypatch.setattr(plots, "plot_heatmaps", lambda *a, **k: seen.append(a[2]) or real(*a, **k))
    common = ["--data", "folder", "--data-dir", setup["folder"], "--weights", setup["weights"], "--images", "0,5",
              "--window", "16", "--stride", "16"]
    code, _, err = run(capsys, "occlude", *common, "--out", tmp_path / "a")
    assert code == 0, err
    network = jaxviz.load_weights(setup["weights"]).network
    images = jaxviz.load_image_folder(setup["folder"]).images[[0, 5]]  # airplane 0, automobile 1 (4 per class)
    predicted = np.asarray(jaxviz.layer_features(network, images)).argmax(1)
    assert seen[-1] == [f"image 0\ntrue: airplane\npred: {network.class_names[predicted[0]]}",
                        f"image 5\ntrue: automobile\npred: {network.class_names[predicted[1]]}"]
    code, _, err = run(capsys, "occlude", *common, "--classes", "cat", "--out", tmp_path / "b")
    assert code == 0, err
    assert seen[-1] == ["image 0\ntrue: airplane\nstrongest: cat", "image 5\ntrue: automobile\nstrongest: cat"]


def test_nnx_model_with_dropout_from_the_command_line(pets, capsys, tmp_path):
    """Also: occlude --all picks no units, so the default --num-units (6) need not fit its 4-unit layer."""
    source = ROOT / "tests" / "dropout_nnx.py"
    code, out, err = run(capsys, "summary", "--model", f"{source}:build")
    assert code == 0, err
    assert out.split("\n")[-2].endswith(f"{3 * 3 * 3 * 4 + 4 + 4 * 3 + 3}")  # Total params: no RNG state
    data = ["--model", f"{source}:build", "--data", "folder", "--data-dir", pets["32"]]
    code, out, err = run(capsys, "attribute", "--method", "saliency", *data, "--out", tmp_path / "a")
    assert code == 0, err
    code, out, err = run(capsys, "occlude", "--all", *data, "--window", "16", "--stride", "16",
                         "--out", tmp_path / "run")
    assert code == 0, err
    assert jaxviz.open_run(tmp_path / "run").complete
