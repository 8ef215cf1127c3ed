"""The concepts benchmark (CKA against a numpy loop, TCAV against Captum): its dry run, in-process."""

from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_the_benchmark_dry_run():
    from benchmarks import concepts as benchmark

    record = benchmark.main(["--dry-run"])  # tiny sizes, nothing written; the Captum part only where importable
    rows = record["rows"]
    assert set(rows) == {"cka", "cka_cross", "tcav"} and record["n_images"] == 80
    cka = rows["cka"]
    assert all(math.isfinite(cka[k]) and cka[k] > 0 for k in ("jaxviz_first_call_seconds", "jaxviz_seconds",
                                                               "numpy_seconds"))
    assert cka["max_abs_difference"] < 1e-3 and cka["batches"] == 2 and len(cka["matrix"]) == len(cka["layers"])
    assert all(math.isfinite(rows["cka_cross"][k]) for k in ("jaxviz_first_call_seconds", "jaxviz_seconds"))
    assert len(rows["cka_cross"]["matrix"]) == 3 and len(rows["cka_cross"]["matrix"][0]) == 2
    tcav = rows["tcav"]
    for cav in ("logistic", "mean_difference"):
        assert all(math.isfinite(tcav[f"jaxviz_{cav}{s}_seconds"]) for s in ("", "_first_call"))
    if "captum_seconds" in tcav:  # run by /tmp/peer/bin/python, where torch and captum are
        assert math.isfinite(tcav["captum_seconds"]) and 0 <= tcav["sign_agreement"] <= 1
