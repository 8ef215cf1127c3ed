"""``jaxviz cka`` and ``jaxviz tcav``: what the API computes, as a table, JSON and a figure; errors as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxviz
from jaxviz.cli import main

from conftest import assert_one_line_error


def test_cka_command_equals_the_api(tmp_path, capsys):
    png = tmp_path / "cka.png"
    assert main(["cka", "--layers", "conv6,fc1", "--batch-size", "200", "--json", "--out", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    want = jaxviz.cka(jaxviz.load_pretrained().network, jaxviz.load_sample().images, ["conv6", "fc1"],
                      batch_size=200)
    np.testing.assert_allclose(out["matrix"], want.matrix, atol=1e-12)
    assert out["layers"] == ["conv6", "fc1"] and out["batches"] == 5 and png.stat().st_size > 0
    assert main(["cka", "--layers", "conv6,fc1", "--batch-size", "200"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["conv6", "fc1"] and f"{want.matrix[0, 1]:.2f}" in table


def test_tcav_command_equals_the_api(tmp_path, capsys):
    png = tmp_path / "tcav.png"
    args = ["tcav", "--targets", "cat", "--layers", "fc1", "--runs", "3", "--builtin", "red,dots",
            "--concept-images", "8", "--cav", "mean_difference"]
    assert main([*args, "--json", "--out", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    net = jaxviz.load_pretrained().network
    concepts = jaxviz.procedural_concepts(32, 32, count=8, names=("red", "dots"))
    want = jaxviz.tcav(net, concepts, ["cat"], ["fc1"], images=jaxviz.load_sample(), runs=3, cav="mean_difference")
    assert out["concepts"] == ["red", "dots"] and out["significant"] == want.significant.tolist()
    np.testing.assert_allclose(out["p_values"], want.p_values)
    assert png.stat().st_size > 0


@pytest.mark.parametrize("args, words", [
    (["cka", "--layers", "conv6,nope"], ["--layers", "nope"]),
    (["cka", "--method", "full", "--batch-size", "4", "--hsic", "biased", "--data", "sample", "--layers", "x"],
     ["--layers"]),
    (["cka", "--hsic", "biased"], ["--hsic", "full"]),
    (["cka", "--batch-size", "3"], ["--batch-size"]),
    (["tcav", "--targets", "zebra"], ["--targets", "zebra"]),
    (["tcav", "--targets", "cat", "--layers", "logits"], ["--layers", "output"]),
    (["tcav", "--targets", "cat", "--runs", "1"], ["--runs"]),
    (["tcav", "--targets", "cat", "--concept", "x=/no/such/folder"], ["--concept['x']", "does not exist"]),
    (["tcav", "--targets", "cat", "--concept", "novalue"], ["--concept", "NAME=DIR"]),
    (["tcav", "--targets", "cat", "--builtin", "tartan"], ["--builtin", "tartan"]),
])
def test_errors_are_one_line(args, words, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors (a bad --runs, --concept)
        code = e.code
    assert_one_line_error(code, capsys.readouterr().err, *words)


def test_an_empty_concept_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["tcav", "--targets", "cat", "--concept", f"stripes={tmp_path / 'empty'}"])
    assert_one_line_error(code, capsys.readouterr().err, "--concept['stripes']", "none")
