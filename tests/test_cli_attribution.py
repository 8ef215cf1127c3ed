"""``jaxviz attribute`` and ``jaxviz faithfulness`` on a tiny weights file and a tiny image folder."""

import json
import math
import sys

import jax
import numpy as np
import pytest

import jaxviz
from jaxviz.cli import main
from jaxviz.methods import gradients as gradients_module

from conftest import assert_one_line_error, write_tiny_cli_setup
from numerics import assert_close

W = 8  # a 32x32 image in 4x4 occlusion positions, RISE / ablation / MuFidelity grids of 4x4 cells
FAST = ["--window", W, "--stride", W, "--num-masks", 50, "--cells", 4, "--segments", 4, "--n-steps", 4,
        "--nt-samples", 2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model, tiny_variables):
    """A tiny CIFAR-10-shaped weights file and a folder of 6 images in 3 CIFAR-10 classes."""
    root = tmp_path_factory.mktemp("cli_attribution")
    weights, folder, _ = write_tiny_cli_setup(root, tiny_model, tiny_variables, per_class=2)
    network = jaxviz.load_weights(weights).network
    data = jaxviz.load_image_folder(folder).with_classes(network.class_names)
    return {"root": root, "weights": str(weights), "folder": str(folder), "network": network, "images": data.images,
            "args": ["--weights", str(weights), "--data", "folder", "--data-dir", str(folder)]}


def run(capsys, *args):
    """Exit status, stdout, stderr; a usage error (argparse exits) counts as its exit status."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _softmax(network):
    logits = network.layer_fn(network.output_layer)
    return lambda variables, x: jax.nn.softmax(logits(variables, x).reshape(x.shape[0], -1), axis=-1)


def _predicted(network, images):
    return np.asarray(jaxviz.layer_features(network, images)).argmax(-1)


@pytest.mark.parametrize("method,options", [
    ("occlusion", ["--window", W, "--stride", 4]),
    ("rise", ["--num-masks", 50, "--cells", 4, "--p", 0.4, "--seed", 3, "--targets", "3,0", "--fill", "0.5"]),
    ("ablation", ["--segments", 4, "--fill", "blur", "--targets", "1,1"]),
])
def test_attribute_maps_equal_the_api(setup, capsys, tmp_path, method, options):
    out_dir = tmp_path / method
    images_opt = [] if method == "occlusion" else ["--images", "0,4"]  # occlusion: the default, one per class
    code, out, err = run(capsys, "attribute", "--method", method, *setup["args"], *images_opt, *options,
                         "--out", out_dir)
    assert code == 0, err
    idx = np.array([0, 2, 4, 1]) if method == "occlusion" else np.array([0, 4])  # 3 classes of 2, sorted
    network, images = setup["network"], setup["images"][idx]
    x, f = network.to_input(images), _softmax(network)
    targets = _predicted(network, images) if method == "occlusion" else np.array(options[options.index("--targets")
                                                                                          + 1].split(","), int)
    if method == "occlusion":
        want = jaxviz.occlude(f, x, window=W, stride=4, params=network.variables).pixel_map(targets)
    elif method == "rise":
        r = jaxviz.rise(f, x, num_masks=50, cells=4, p=0.4, seed=3, fill=0.5, params=network.variables)
        want = r.maps[np.arange(2), ..., targets]
    else:
        a = jaxviz.feature_ablation(f, x, segments=jaxviz.grid_segments(32, 32, cells=4), fill="blur",
                                    params=network.variables)
        want = a.maps[np.arange(2), ..., targets]
    record = json.loads(out)
    assert record["method"] == method and record["layer"] == "logits"
    assert record["images"] == idx.tolist() and record["targets"] == targets.tolist()
    with np.load(out_dir / "attribution.npz") as z:
        assert z["maps"].shape == (len(idx), 32, 32) and z["maps"].dtype == np.float32
        assert z["targets"].tolist() == targets.tolist() and z["images"].tolist() == idx.tolist()
        assert str(z["method"]) == method and str(z["layer"]) == "logits"
        assert json.loads(str(z["settings"]))["method"] == method
        assert np.all((z["base"] > 0) & (z["base"] < 1))  # softmax probabilities of the targets
        # the CLI computes only the targets' outputs, the API here all ten: another program, so not bitwise
        assert_close(z["maps"], want, scale=np.abs(want).max() + z["base"].max())
    assert (out_dir / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out_dir.iterdir()) == ["attribution.npz", "attribution.png"]


@pytest.mark.parametrize("method,options", [
    ("saliency", []),
    ("ixg", ["--targets", "2,0"]),
    ("ig", ["--n-steps", 4, "--ig-method", "riemann_trapezoid", "--fill", "0.5"]),
    ("smoothgrad", ["--nt-samples", 3, "--stdevs", 0.2, "--nt-type", "vargrad", "--seed", 2]),
    ("gradcam", ["--cam-layer", "conv3"]),
])
def test_attribute_gradient_maps_equal_the_api(setup, capsys, tmp_path, method, options):
    code, out, err = run(capsys, "attribute", "--method", method, *setup["args"], "--images", "1,5", *options,
                         "--out", tmp_path / method)
    assert code == 0, err
    network, images = setup["network"], setup["images"][[1, 5]]
    x, f = network.to_input(images), _softmax(network)
    targets = np.array([2, 0]) if method == "ixg" else _predicted(network, images)
    common = {"params": network.variables, "targets": targets}
    if method == "saliency":
        want = jaxviz.saliency(f, x, **common).attributions.sum(-1)
    elif method == "ixg":
        want = jaxviz.input_x_gradient(f, x, **common).attributions.sum(-1)
    elif method == "ig":
        want = jaxviz.integrated_gradients(f, x, n_steps=4, method="riemann_trapezoid", baselines=0.5,
                                           **common).attributions.sum(-1)
    elif method == "smoothgrad":
        want = jaxviz.smoothgrad(f, x, nt_samples=3, stdevs=0.2, nt_type="vargrad", seed=2,
                                 **common).attributions.sum(-1)
    else:
        want = jaxviz.grad_cam(network, x, layer="conv3", targets=targets,
                               score=lambda out: jax.nn.softmax(out, -1)).attributions
    record = json.loads(out)
    assert record["method"] == method and record["targets"] == targets.tolist()
    with np.load(tmp_path / method / "attribution.npz") as z:
        assert z["maps"].shape == (2, 32, 32)
        assert_close(z["maps"], want)
    if method == "gradcam":
        assert record["settings"]["cam_layer"] == "conv3"


def test_sanity_json_matches_the_api(setup, capsys, tmp_path):
    out_dir = tmp_path / "sanity"
    code, out, err = run(capsys, "sanity", *setup["args"], "--images", "0,2,4", "--methods", "saliency,gradcam",
                         "--mode", "independent", "--seed", 4, "--json", "--out", out_dir)
    assert code == 0, err
    record = json.loads(out)
    assert json.loads((out_dir / "sanity.json").read_text()) == record
    network = setup["network"]
    want = jaxviz.randomization_test(network, setup["images"][[0, 2, 4]], methods=("saliency", "gradcam"),
                                     mode="independent", seed=4)
    assert record["layers"] == list(want.layers) and record["mode"] == "independent"
    assert record["initializer"] == "model" and record["targets"] == want.targets.tolist()
    for method in ("saliency", "gradcam"):
        np.testing.assert_allclose(np.array(record["per_image"][method], float), want.correlations[method],
                                   atol=1e-3)
        assert record["passes"][method] == want.passes()[method]
    assert record["sentence"] == want.sentence() or record["sentence"].split(":")[0] == want.sentence().split(":")[0]
    assert (out_dir / "sanity.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = run(capsys, "sanity", *setup["args"], "--images", "1", "--methods", "ixg")
    assert code == 0, err
    assert "input × gradient" in out and "cascading randomization of logits, fc1" in out


def test_attribute_a_unit_of_a_layer(setup, capsys, tmp_path):
    """--layer explains a unit's mean activation (network.score_fn), not the softmax."""
    code, out, err = run(capsys, "attribute", "--method", "occlusion", *setup["args"], "--images", "1,5",
                         "--layer", "fc1", "--targets", "7,2", "--window", W, "--stride", W, "--out", tmp_path / "u")
    assert code == 0, err
    network, images = setup["network"], setup["images"][[1, 5]]
    want = jaxviz.occlude(network.score_fn("fc1"), network.to_input(images), window=W, stride=W,
                          params=network.variables).pixel_map(np.array([7, 2]))
    with np.load(tmp_path / "u" / "attribution.npz") as z:
        assert_close(z["maps"], want, scale=np.abs(want).max() + np.abs(z["base"]).max())
    assert json.loads(out)["explained"] == "mean activation"


@pytest.mark.slow
def test_faithfulness_json_matches_deletion_curves(setup, capsys, tmp_path):
    out_dir = tmp_path / "faith"
    code, out, err = run(capsys, "faithfulness", *setup["args"], "--images", "0,3", *FAST, "--steps", 10,
                         "--mu-grid", 4, "--num-subsets", 16, "--json", "--out", out_dir)
    assert code == 0, err
    record = json.loads(out)
    assert json.loads((out_dir / "faithfulness.json").read_text()) == record
    metrics = {"deletion_auc", "insertion_auc", "mu_fidelity"}
    assert list(record["methods"]) == ["occlusion", "rise", "ablation", "saliency", "ixg", "ig", "smoothgrad",
                                       "gradcam"]
    assert record["settings"]["cam_layer"] == "pool2" and record["settings"]["n_steps"] == 4
    for method, means in record["methods"].items():
        assert set(means) == metrics and all(math.isfinite(v) for v in means.values())
        assert set(record["per_image"][method]) == metrics
        assert all(len(v) == 2 and all(map(math.isfinite, v)) for v in record["per_image"][method].values())
    assert sorted(record["ranking"]) == sorted(record["methods"]) and record["sentence"].startswith("On this model")
    network, images = setup["network"], setup["images"][[0, 3]]
    targets = _predicted(network, images)
    assert record["targets"] == targets.tolist()
    x, f = network.to_input(images), _softmax(network)
    with np.load(out_dir / "faithfulness.npz") as z:
        assert z["images"].tolist() == [0, 3] and z["targets"].tolist() == targets.tolist()
        for method in record["methods"]:
            maps = z[f"maps_{method}"]
            assert maps.shape == (2, 32, 32)
            curve = jaxviz.deletion_curve(f, x, maps, steps=10, targets=targets, params=network.variables)
            assert_close(record["per_image"][method]["deletion_auc"], curve.auc, scale=1.0)
            assert record["methods"][method]["deletion_auc"] == pytest.approx(float(np.mean(curve.auc)), abs=1e-5)
        # the occlusion map is the one `jaxviz attribute` makes with the same settings
        want = jaxviz.occlude(f, x, window=W, stride=W, params=network.variables).pixel_map(targets)
        assert_close(z["maps_occlusion"], want, scale=1.0)
    assert (out_dir / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"


def test_faithfulness_table_of_the_chosen_methods(setup, capsys):
    code, out, err = run(capsys, "faithfulness", *setup["args"], "--images", "2", *FAST, "--steps", 10,
                         "--mu-grid", 4, "--num-subsets", 16, "--methods", "rise,occlusion")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "deletion AUC (lower better)" in lines[1] and "insertion AUC (higher better)" in lines[1]
    assert "MuFidelity (higher better)" in lines[1]
    assert [line.split()[0] for line in lines[2:4]] == ["RISE", "occlusion"]
    assert "feature ablation" not in out
    assert lines[-1].startswith("On this model ")


def _no_method_runs(monkeypatch) -> None:
    """Every method's function fails the test if it runs (the registry's methods call them)."""
    from jaxviz.methods import ablation, gradcam, gradients, occlusion, rise
    for module, name in ((occlusion, "occlude"), (rise, "rise"), (ablation, "feature_ablation"),
                         (gradients, "saliency"), (gradients, "input_x_gradient"), (gradients, "integrated_gradients"),
                         (gradients, "smoothgrad"), (gradcam, "grad_cam")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} ran"))


@pytest.mark.parametrize("args,words", [
    (["attribute", "--method", "lime"], ["--method", "lime"]),
    (["attribute", "--method", "ig", "--n-steps", "0"], ["--n-steps", "0"]),
    (["attribute", "--method", "ig", "--ig-method", "simpson"], ["--ig-method", "simpson"]),
    (["attribute", "--method", "smoothgrad", "--stdevs", "-1"], ["--stdevs", "non-negative"]),
    (["attribute", "--method", "smoothgrad", "--stdevs", "nan"], ["--stdevs", "non-negative"]),
    (["attribute", "--method", "smoothgrad", "--nt-type", "mean"], ["--nt-type", "mean"]),
    (["attribute", "--method", "gradcam", "--cam-layer", "fc1"], ["--cam-layer: ", "before 'logits'", "conv1"]),
    (["attribute", "--method", "gradcam", "--cam-layer", "conv9"], ["--cam-layer: unknown layer 'conv9'"]),
    (["attribute", "--method", "gradcam", "--layer", "conv1", "--images", "0", "--targets", "0"],
     ["spatial maps before 'conv1'"]),
    (["faithfulness", "--methods", "gradcam", "--cam-layer", "fc1"], ["--cam-layer: "]),
    (["sanity", "--methods", "saliency,occlusion"], ["--methods", "'occlusion'", "gradcam"]),
    (["sanity", "--mode", "all"], ["--mode", "all"]),
    (["sanity", "--images", "9"], ["--images: ", "[0, 6)"]),
    (["sanity", "--cam-layer", "fc1"], ["--cam-layer: ", "conv1"]),
    (["attribute", "--method", "rise", "--images", "0,1", "--targets", "1,2,3"], ["--targets: ", "2 images", "3"]),
    (["attribute", "--method", "rise", "--images", "0,1", "--targets", "1,10"], ["--targets: ", "[0, 10)", "10"]),
    (["attribute", "--method", "occlusion", "--layer", "fc1", "--images", "0", "--targets", "16"],
     ["--targets: ", "[0, 16)"]),
    (["attribute", "--method", "occlusion", "--images", "0,6"], ["--images: ", "[0, 6)", "6"]),
    (["attribute", "--method", "occlusion", "--images", "-1"], ["--images: ", "-1"]),
    (["attribute", "--method", "rise", "--num-masks", "0"], ["--num-masks", "positive", "0"]),
    (["attribute", "--method", "rise", "--cells", "-2"], ["--cells", "-2"]),
    (["attribute", "--method", "rise", "--cells", "33"], ["--cells: ", "33"]),
    (["attribute", "--method", "rise", "--p", "0"], ["--p", "(0, 1]"]),
    (["attribute", "--method", "rise", "--p", "1.5"], ["--p", "(0, 1]", "1.5"]),
    (["attribute", "--method", "rise", "--p", "nan"], ["--p", "(0, 1]"]),
    (["attribute", "--method", "occlusion", "--window", "0"], ["--window", "0"]),
    (["attribute", "--method", "occlusion", "--window", "33"], ["--window: ", "33"]),
    (["attribute", "--method", "occlusion", "--stride", "0"], ["--stride", "0"]),
    (["attribute", "--method", "ablation", "--segments", "0"], ["--segments", "0"]),
    (["attribute", "--method", "ablation", "--segments", "40"], ["--segments: ", "40"]),
    (["attribute", "--method", "ablation", "--slic", "0"], ["--slic", "0"]),
    (["attribute", "--method", "ablation", "--slic", "20", "--segments", "4"], ["--segments", "--slic"]),
    (["attribute", "--method", "ablation", "--slic", "20"], ["--slic: ", "scikit-image"]),
    (["attribute", "--method", "ablation", "--fill", "1,2"], ["--fill: ", "'1,2'"]),
    (["attribute", "--method", "occlusion", "--layer", "conv9"], ["--layer: unknown layer 'conv9'"]),
    (["attribute", "--method", "rise", "--seed", "-1"], ["--seed", "-1"]),
    (["faithfulness", "--methods", "occlusion,lime"], ["--methods", "'lime'"]),
    (["faithfulness", "--images", "0,1", "--targets", "3"], ["--targets: ", "2 images"]),
    (["faithfulness", "--images", "0,1", "--targets", "3,-1"], ["--targets: ", "[0, 10)"]),
    (["faithfulness", "--images", "7"], ["--images: ", "[0, 6)"]),
    (["faithfulness", "--steps", "0"], ["--steps", "0"]),
    (["faithfulness", "--steps", "1025"], ["--steps: expected an int in [1, 1024]", "pixels", "1025"]),
    (["faithfulness", "--methods", "occlusion,ig", "--n-steps", "1", "--steps", "100000"], ["--steps: "]),
    (["attribute", "--method", "smoothgrad", "--nt-type", "vargrad", "--nt-samples", "1"],
     ["--nt-samples: expected an int in [2, ", "VarGrad", "got 1"]),
    (["attribute", "--method", "ig", "--ig-method", "riemann_left", "--n-steps", "1"],
     ["--n-steps: expected an int >= 2", "two steps", "got 1"]),
    (["faithfulness", "--num-subsets", "1"], ["--num-subsets", ">= 2"]),
    (["faithfulness", "--num-masks", "-5"], ["--num-masks", "-5"]),
    (["faithfulness", "--mu-grid", "33"], ["--mu-grid: ", "33"]),
    (["faithfulness", "--segments", "33"], ["--segments: ", "33"]),
    (["faithfulness", "--slic", "5"], ["unrecognized arguments: --slic"]),  # attribute's alone
])
def test_user_errors_exit_2_before_any_work(setup, capsys, tmp_path, monkeypatch, args, words):
    for name in ("occlude", "rise", "feature_ablation", "compare_methods", "layer_features", "slic_segments",
                 "randomization_test"):
        monkeypatch.setattr(jaxviz, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} ran"))
    _no_method_runs(monkeypatch)
    for name in ("skimage", "skimage.segmentation"):  # scikit-image missing, whether it is installed or not
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run(capsys, *args, *setup["args"], "--out", tmp_path / "err")
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "err").exists()  # nothing is created for a run that cannot start


@pytest.mark.parametrize("command", [["attribute", "--method", "occlusion"], ["faithfulness"], ["sanity"]])
def test_unwritable_out_is_refused_first(setup, capsys, tmp_path, command):
    taken = tmp_path / "a-file"
    taken.write_bytes(b"keep")
    code, _, err = run(capsys, *command, *setup["args"], "--out", taken / "sub")
    assert_one_line_error(code, err, "--out: ", "is a file")
    code, _, err = run(capsys, *command, *setup["args"], "--out", taken)
    assert_one_line_error(code, err, "--out: ", "expected a directory")
    assert taken.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_sanity_of_constant_maps_reports_undefined_not_a_crash(setup, capsys, tmp_path):
    """Input x gradient of black images is 0 everywhere: no correlation (null in JSON, "undefined" in the
    table), no verdict; sanity.json and sanity.png are written."""
    from PIL import Image

    folder = tmp_path / "black"
    for name in jaxviz.CIFAR10_CLASSES[:2]:
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / name / "0.png")
    args = ["--weights", setup["weights"], "--data", "folder", "--data-dir", folder, "--methods", "ixg,saliency"]
    code, out, err = run(capsys, "sanity", *args, "--json", "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads(out)
    assert json.loads((tmp_path / "out" / "sanity.json").read_text()) == record
    assert (tmp_path / "out" / "sanity.png").read_bytes()[:4] == b"\x89PNG"
    assert record["final"]["ixg"] is None and record["passes"]["ixg"] is None
    assert all(v is None for row in record["per_image"]["ixg"] for v in row)
    assert all(v is None for v in record["mean"]["ixg"])
    assert any(isinstance(v, float) for row in record["per_image"]["saliency"] for v in row)  # defined somewhere
    assert "input × gradient undefined" in record["sentence"]
    code, out, err = run(capsys, "sanity", *args)
    assert code == 0, err
    table = out.splitlines()
    ixg_row = next(line for line in table if line.strip().startswith("input × gradient"))
    assert ixg_row.split()[3:] == ["undefined"] * (len(ixg_row.split()) - 3) and "nan" not in out


FUNCTION_MODEL = '''
import numpy as np

INPUT_SHAPE = (32, 32, 3)


def apply(variables, x, layer):
    pooled = x.reshape(x.shape[0], 8, 4, 8, 4, 3).mean(axis=(2, 4))  # (N, 8, 8, 3)
    if layer == "pool":
        return pooled
    hidden = pooled.reshape(x.shape[0], -1) @ variables["w1"]
    return hidden if layer == "hidden" else hidden @ variables["w2"]


def build():
    rng = np.random.default_rng(0)
    variables = {"w1": rng.normal(size=(192, 6)).astype(np.float32), "w2": rng.normal(size=(6, 3)).astype(np.float32)}
    return apply, variables, ("pool", "hidden", "out")
'''


@pytest.mark.parametrize("args,words", [
    (["sanity", "--methods", "saliency"], ["--model: none of its layers (pool, hidden, out)", "['w1', 'w2']"]),
    (["faithfulness", "--methods", "occlusion,saliency,gradcam"], ["--methods: gradcam: ", "no apply_perturbed"]),
])
def test_a_function_model_is_refused_by_option_before_any_work(setup, capsys, tmp_path, monkeypatch, args, words):
    """An (apply, variables, layer_names) model: no per-layer variables for the sanity check, no Grad-CAM
    without apply_perturbed; both refused in one line before any method runs."""
    model = tmp_path / "function_model.py"
    model.write_text(FUNCTION_MODEL)
    _no_method_runs(monkeypatch)
    monkeypatch.setattr(jaxviz, "layer_features", lambda *a, **k: pytest.fail("layer_features ran"))
    data = ["--data", "folder", "--data-dir", setup["folder"], "--model", f"{model}:build"]
    code, _, err = run(capsys, *args, *data, "--images", "0,1")
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("extra,words", [
    (["--units", "99"], ["--units: ", "[0, 10)", "[99]"]),
    (["--layer", "fc1", "--units", "3,99"], ["--units: ", "[0, 16)"]),
])
def test_attribute_all_errors_name_the_option(setup, capsys, tmp_path, extra, words):
    code, _, err = run(capsys, "attribute", "--method", "occlusion", "--all", *setup["args"], "--out",
                       tmp_path / "run", *extra)
    assert_one_line_error(code, err, *words)


@pytest.fixture(scope="module")
def nan_setup(setup, tiny_model, tiny_variables):
    """The tiny model with a NaN in fc1's bias: fc1 and the logits are NaN."""
    variables = jax.tree_util.tree_map(np.asarray, tiny_variables)
    variables["params"]["fc1"]["bias"] = np.where(np.arange(16) == 2, np.nan, variables["params"]["fc1"]["bias"]
                                                  ).astype(np.float32)
    weights = setup["root"] / "nan.msgpack"
    jaxviz.save_weights(weights, tiny_model, variables, metadata={"dataset": "tiny"})
    return ["--weights", str(weights), "--data", "folder", "--data-dir", setup["folder"]]


@pytest.mark.parametrize("command", [
    ["attribute", "--method", "saliency"], ["attribute", "--method", "occlusion", "--targets", "1,2,3,4"],
    ["faithfulness", "--methods", "saliency"], ["sanity", "--methods", "saliency"], ["evaluate"],
    ["occlude", "--images", "0,1"], ["topk", "--k", "2"], ["report", "--k", "2"]])
def test_a_model_whose_output_is_nan_is_refused(nan_setup, capsys, tmp_path, command):
    """Not an all-NaN map titled with class 0 (the argmax of NaN): one line naming --model, the layer, the
    images and the first layer that is not finite."""
    out = [] if command == ["evaluate"] else ["--out", tmp_path / "out"]
    code, _, err = run(capsys, *command, *nan_setup, *out)
    layer = "fc1" if command[0] == "topk" else "logits"
    assert_one_line_error(code, err, "--model: ", "not finite", f"layer {layer!r}", "is 'fc1'")
    if command[0] == "attribute":
        assert "4 of 4 images (0, 2, 4, 1)" in err
    assert not (tmp_path / "out" / "attribution.npz").exists()


def test_report_api_refuses_a_nan_model(tiny_model, tiny_variables, tiny_dataset, tmp_path):
    variables = jax.tree_util.tree_map(lambda a: np.full_like(a, np.nan), tiny_variables)
    network = jaxviz.from_cnn(tiny_model, variables, ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    data = jaxviz.Dataset(tiny_dataset.images, tiny_dataset.labels, ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"network: the model's output is not finite: layer 'logits' .* 12 of 12 "
                                         r"images .* is 'conv1'"):
        jaxviz.report.analyses.analyse(network, data.with_classes(network.class_names),
                                       jaxviz.ReportSettings(k=2, num_units=2))


def test_default_images_take_each_class_in_turn_and_titles_show_label_and_prediction(setup, capsys, tmp_path,
                                                                                      monkeypatch):
    """The folder is sorted by class (3 classes of 2): the defaults are 0, 2, 4 (the first of each), then 1;
    a title shows the true class and the prediction, which used to read as the label."""
    from jaxviz import plots

    seen = []
    real = plots.plot_attribution_maps
    monkeypatch.setattr(plots, "plot_attribution_maps", lambda *a, **k: seen.append(k["titles"]) or real(*a, **k))
    code, out, err = run(capsys, "attribute", "--method", "saliency", *setup["args"], "--out", tmp_path / "a")
    assert code == 0, err
    idx = [0, 2, 4, 1]
    assert json.loads(out)["images"] == idx
    network, names = setup["network"], ("airplane", "automobile", "bird")
    predicted = _predicted(network, setup["images"][idx])
    assert seen[-1] == [f"{i}: true: {names[i // 2]}\npred: {network.class_names[p]}" for i, p in zip(idx, predicted)]
    code, out, err = run(capsys, "attribute", "--method", "saliency", *setup["args"], "--images", "3",
                         "--targets", "9", "--out", tmp_path / "b")
    assert code == 0, err
    want = f"3: true: automobile\npred: {network.class_names[predicted[3]]}"
    assert seen[-1] == [want + ("" if predicted[3] == 9 else "\nmap of truck")]
    code, out, err = run(capsys, "sanity", *setup["args"], "--methods", "saliency", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == [0, 2, 4, 1, 3, 5]
    code, out, err = run(capsys, "faithfulness", *setup["args"], "--methods", "saliency", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == idx


def test_attribute_writes_both_files_or_neither(setup, capsys, tmp_path, monkeypatch):
    from jaxviz import plots

    out_dir = tmp_path / "a"
    args = ["attribute", "--method", "saliency", *setup["args"], "--images", "0,1", "--out", out_dir]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    before = {name: (out_dir / name).read_bytes() for name in ("attribution.npz", "attribution.png")}

    def full(fig, path, **kwargs):
        raise OSError(f"No space left on device: {path}")

    monkeypatch.setattr(plots, "save_figure", full)
    code, _, err = run(capsys, *args[:-4], "--images", "2,3", "--out", out_dir)
    assert_one_line_error(code, err, "No space left")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # the old pair, no temporary files
    monkeypatch.undo()
    (tmp_path / "b" / "attribution.png").mkdir(parents=True)  # an output that cannot be written: refused first
    monkeypatch.setattr(gradients_module, "saliency", lambda *a, **k: pytest.fail("saliency ran"))
    code, _, err = run(capsys, *args[:-1], tmp_path / "b")
    assert_one_line_error(code, err, "--out: ", "attribution.png", "is a directory")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["attribution.png"]
    code, _, err = run(capsys, "attribute", "--method", "saliency", *setup["args"], "--images", ",".join(["0"] * 33),
                       "--out", tmp_path / "c")
    assert_one_line_error(code, err, "--images: ", "at most 32", "33")
    assert not (tmp_path / "c").exists()
