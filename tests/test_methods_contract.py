"""The contract every registered method keeps: one row per method in ``ROWS``, the same checks for all.

Adding a method to ``jaxviz.methods.registry`` without a row here fails ``test_every_method_has_a_row``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxviz
from jaxviz.checks import ArgumentError
from jaxviz.cli import main
from jaxviz.evaluation.comparison import attribute
from jaxviz.methods import registry
from jaxviz.methods.base import KINDS, Attribution, Method, explain, option, options_fields
from jaxviz.methods.registry import METHODS, names, register

from conftest import make_uint8_images, write_tiny_cli_setup
from numerics import assert_close

# name -> (small options that keep the test fast, one bad option the method must refuse before any work,
#          the word its error names)
ROWS = {
    "occlusion": ({"window": 8, "stride": 8}, {"window": 0}, "window"),
    "rise": ({"num_masks": 24, "cells": 4}, {"cells": 0}, "cells"),
    "ablation": ({"segments": 4}, {"segments": 0}, "segments"),
    "saliency": ({}, {"window": 4}, "window"),  # an option it does not have
    "ixg": ({}, {"num_masks": 4}, "num_masks"),
    "ig": ({"n_steps": 4}, {"n_steps": 0}, "n_steps"),
    "smoothgrad": ({"nt_samples": 3}, {"nt_samples": 0}, "nt_samples"),
    "gradcam": ({}, {"cam_layer": "fc1"}, "cam_layer"),
}


@pytest.fixture(scope="module")
def net(tiny_model, tiny_variables):
    return jaxviz.from_cnn(tiny_model, tiny_variables, tuple(f"c{i}" for i in range(10)))


@pytest.fixture(scope="module")
def images():
    return make_uint8_images(3, seed=11)


def _run(net, images, name, **execution):
    x = net.to_input(images)
    targets = jaxviz.layer_features(net, images).argmax(-1)
    return attribute(net, x, name, targets=targets, options=ROWS[name][0], **execution)


def test_every_method_has_a_row():
    assert set(ROWS) == set(METHODS) and tuple(METHODS) == names()


@pytest.mark.parametrize("name", list(METHODS))
def test_the_record_is_complete(name):
    method = METHODS[name]
    assert method.name == name and method.kind in KINDS and method.label
    for field in dataclasses.fields(method.options):
        assert field.metadata.get("help"), f"{name}.{field.name} has no help text"
    method.options()  # every option has a default
    assert isinstance(method.describe(method.options()), str)


def test_an_option_shared_by_methods_means_the_same_in_each():
    seen = {}
    for method in METHODS.values():
        for field_name, field in options_fields(method.options).items():
            default, help_text = seen.setdefault(field_name, (field.default, field.metadata["help"]))
            assert (default, help_text) == (field.default, field.metadata["help"]), field_name


@pytest.mark.parametrize("name", list(METHODS))
def test_maps_have_one_shape_and_meaning(net, images, name, compiles):
    got = _run(net, images, name)
    assert isinstance(got, Attribution) and got.method == name
    assert got.maps.shape == (3, 32, 32) and got.maps.dtype == np.float32 and np.isfinite(got.maps).all()
    # maps[n] is the map of output targets[n]: the method's own result, read by the one meaning of targets
    assert_close(got.maps, got.result.pixel_map(got.targets), scale=got.maps)
    before = len(compiles)
    again = _run(net, images, name)
    assert len(compiles) == before, f"{name} compiled again on a second call"
    np.testing.assert_array_equal(again.maps, got.maps)  # the same program on the same inputs


@pytest.mark.parametrize("name", list(METHODS))
def test_maps_do_not_depend_on_the_chunk_size(net, images, name):
    whole = _run(net, images, name).maps
    assert_close(_run(net, images, name, chunk_size=1).maps, whole, scale=whole, rel=3e-5)  # reassociation


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_options_are_refused_before_any_compilation(net, images, name, compiles):
    bad, word = ROWS[name][1], ROWS[name][2]
    x = net.to_input(images)
    before = len(compiles)
    with pytest.raises(ArgumentError) as info:
        attribute(net, x, name, targets=np.zeros(3, np.int64), options=bad)
    assert info.value.argument == word and len(compiles) == before


@pytest.mark.parametrize(("function", "option"), [(jaxviz.rise, "num_masks"), (jaxviz.smoothgrad, "nt_samples")])
def test_more_pairs_than_int32_indexes_are_refused_before_f_is_traced(net, images, function, option):
    """The engines number (image, sample) pairs with int32: 3 images * 2**30 samples is refused by the one rule
    (``checks.check_pair_count``), naming the option that set the count, before ``f`` is traced."""
    traced = []

    def f(params, x):
        traced.append(x.shape)
        return net.layer_fn("fc1")(params, x)

    with pytest.raises(ArgumentError, match=r"< 2\*\*31") as info:
        function(f, net.to_input(images), params=net.variables, **{option: 2**30})
    assert info.value.argument == option and traced == []


def test_the_perturbation_engine_refuses_more_pairs_than_int32_indexes(net, images):
    """The engine's own guard, for any mask family (here one of 2**30 masks per image), names the family's
    argument before the chunk program is built."""
    from jaxviz.engine.perturb import MaskFamily, perturbed_outputs, prepare

    prepared = prepare(net.layer_fn("fc1"), net.to_input(images), fill=0.0, units=None, params=net.variables,
                       blur_sigma=3.0)
    family = MaskFamily(lambda data, image, index: data, np.zeros((32, 32), np.float32), 2**30,
                        argument="num_boxes")
    with pytest.raises(ArgumentError, match=r"3 \* 1073741824") as info:
        perturbed_outputs(prepared, family, difference=True)
    assert info.value.argument == "num_boxes"


@pytest.mark.parametrize("name", list(METHODS))
def test_the_command_line_map_is_the_api_map(net, tiny_model, tiny_variables, tmp_path, capsys, name):
    weights, folder, _ = write_tiny_cli_setup(tmp_path, tiny_model, tiny_variables, per_class=1)
    flags = [f for k, v in ROWS[name][0].items() for f in (f"--{k.replace('_', '-')}", str(v))]
    code = main(["attribute", "--method", name, "--weights", str(weights), "--data", "folder", "--data-dir",
                 str(folder), "--images", "0,1,2", "--out", str(tmp_path / "out"), *flags])
    assert code == 0, capsys.readouterr().err
    saved = np.load(tmp_path / "out" / "attribution.npz")
    data = jaxviz.load_image_folder(folder).with_classes(jaxviz.CIFAR10_CLASSES)
    network = jaxviz.load_weights(weights).network
    want = attribute(network, network.to_input(data.images[:3]), name, targets=saved["targets"],
                     options=ROWS[name][0])
    assert_close(saved["maps"], want.maps, scale=want.maps)
    assert json.loads(str(saved["settings"]))["settings"] == {
        k: v for k, v in want.settings.items() if k != "fill"} | ({"fill": "0"} if "fill" in want.settings else {})


@pytest.mark.parametrize("name", names(run=True))
def test_a_dataset_run_makes_the_single_call_map(net, images, tmp_path, name):
    x = net.to_input(images)
    options = {k: v for k, v in ROWS[name][0].items()}
    run = jaxviz.run_dataset(net, images, tmp_path / "run", method=name, layer=net.output_layer, keep_grid=True,
                             images_per_step=2, progress=False, **options)
    grid = np.asarray(run.grid[:])  # (N, R, C, U): every unit of the raw output layer
    explained = explain(net, net.output_layer)
    raw = dataclasses.replace(explained, f=net.score_fn(net.output_layer), softmax=False)
    every = np.tile(np.arange(10), (3, 1))
    for unit in (0, 7):
        single = METHODS[name].run(raw, x, targets=every[:, unit], options=METHODS[name].make_options(options),
                                   execution={})
        result = single.result
        want = result.grid[..., 0] if name == "occlusion" else (
            result.maps[..., 0] if name == "rise" else result.scores[..., 0].reshape(3, *grid.shape[1:3]))
        assert_close(grid[..., unit], want, scale=want)


@pytest.mark.slow
def test_four_devices_make_the_one_device_maps(net, images, tmp_path):
    """Every method on 4 (forced host) devices in a subprocess equals the maps here on one."""
    script = tmp_path / "four.py"
    script.write_text(f"""
import sys, numpy as np, jax
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_tiny_model, randomize_variables, make_uint8_images
import jaxviz
from jaxviz.models.cnn import init_variables
from jaxviz.evaluation.comparison import attribute
assert len(jax.devices()) == 4
model = make_tiny_model()
variables = randomize_variables(init_variables(model, jax.random.key(0)), seed=0)
net = jaxviz.from_cnn(model, variables, tuple(f"c{{i}}" for i in range(10)))
images = make_uint8_images(3, seed=11)
targets = jaxviz.layer_features(net, images).argmax(-1)
rows = {ROWS!r}
np.savez(sys.argv[1], **{{n: attribute(net, net.to_input(images), n, targets=targets, options=rows[n][0]).maps
                         for n in rows}})
""")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "maps.npz")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = np.load(tmp_path / "maps.npz")
    for name in METHODS:
        one = _run(net, images, name).maps
        assert_close(four[name], one, scale=one)


@dataclasses.dataclass(frozen=True)
class _ConstantOptions:
    value: float = option(1.0, "the value of every pixel of the map")


def _constant_maps(explained, x, *, targets, options, execution):
    return Attribution(np.full(x.shape[:3], options.value, np.float32), targets, "constant",
                       dataclasses.asdict(options), result=None)


def _constant_method(name="constant", **changes):
    record = Method(name, "constant map", "perturbation", _ConstantOptions, _constant_maps,
                    check=lambda explained, options: None, describe=lambda options: f"{options.value}")
    return dataclasses.replace(record, **changes)


def test_a_registered_method_runs_through_attribute_and_compare_methods(net, images, monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the built-in registry stays as it was
    register(_constant_method())
    assert "constant" in registry.names() and "constant" not in METHODS
    x = net.to_input(images)
    got = attribute(net, x, "constant", targets=np.arange(3), options={"value": 2.0})
    np.testing.assert_array_equal(got.maps, np.full((3, 32, 32), 2.0, np.float32))
    comparison = jaxviz.compare_methods(net, images, methods=("constant", "saliency"), steps=8, mu_grid=4,
                                        num_subsets=16)
    assert set(comparison.maps) == {"constant map", "saliency"}
    np.testing.assert_array_equal(comparison.maps["constant map"], np.ones((3, 32, 32), np.float32))
    # a constant map carries no ranking: MuFidelity's correlation with it is undefined or 0, never high
    assert not np.nanmax(np.abs(comparison.scores["constant map"]["mu_fidelity"])) > 1e-6
    with pytest.raises(ArgumentError, match="value"):
        attribute(net, x, "constant", targets=np.arange(3), options={"window": 3})


@pytest.mark.parametrize(("record", "word"), [
    (_constant_method("saliency"), "already registered"),
    (_constant_method("Bad name"), "lowercase identifier"),
    (_constant_method(kind="learned"), "kind"),
    (_constant_method(options=dict), "options dataclass"),
])
def test_register_refuses_a_bad_record(record, word, monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    with pytest.raises(ArgumentError, match=word):
        register(record)
    assert set(registry.METHODS) == set(METHODS)
