"""The atlas: its numbers against independent computations (a full forward, numpy, ``occlude``, ``visualize``),
resume after ``kill -9`` in each stage, adding a layer, bad input, the command line, and the site in a real
browser (headless Chromium, driven by Playwright: these tests fail, never skip, when the browser is missing)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import jaxviz
from jaxviz.analysis.unit_occlusion import UNIT_WINDOW
from jaxviz.atlas import build
from jaxviz.atlas.build import OCCLUSION_STRIDE, cache_folder
from jaxviz.atlas.site import SIMILAR
from jaxviz.checks import ArgumentError
from jaxviz.cli import main

from atlas_worker import SETTINGS, VIS_PART, tiny_atlas_setup
from conftest import assert_one_line_error, make_uint8_images, write_tiny_cli_setup

LAYERS = ("conv4", "fc1")
WORKER = Path(__file__).resolve().parent / "atlas_worker.py"


@pytest.fixture(scope="module")
def setup():
    return tiny_atlas_setup()


def _build(network, data, out, layers, **options):
    saved, build.VIS_PART = build.VIS_PART, VIS_PART  # as the worker: several parts per tiny layer
    try:
        return jaxviz.build_atlas(network, data, out, layers=layers, progress=False, **{**SETTINGS, **options})
    finally:
        build.VIS_PART = saved


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    network, data = setup
    return _build(network, data, tmp_path_factory.mktemp("atlas") / "site", LAYERS)


def layer_json(site: Path, layer: str) -> tuple[dict, dict]:
    manifest = json.loads((site / "atlas.json").read_text())
    entry = next(e for e in manifest["layers"] if e["name"] == layer)
    return json.loads((site / "data" / f"{entry['file']}.json").read_text()), entry


def full_scores(network, data, layer) -> np.ndarray:
    """float64 (N, U): one forward of every image (conv maps averaged over space)."""
    return jaxviz.unit_scores(np.asarray(jaxviz.layer_features(network, data.images, layer=layer))).astype(np.float64)


def close(a, b, scale) -> bool:
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=0, atol=1e-5 * max(scale, 1e-6)))


def test_top_k_class_means_selectivity_and_correlations_equal_numpy(built, setup):
    network, data = setup
    logits = np.asarray(jaxviz.layer_features(network, data.images))
    k = SETTINGS["k"]
    for layer in LAYERS:
        s = full_scores(network, data, layer)
        scale = np.abs(s).max()
        order = np.argsort(-s, axis=0, kind="stable")[:k]  # ties: the lower index, as a stable sort
        with np.errstate(invalid="ignore", divide="ignore"):  # dead units: constant, NaN
            correlation = np.corrcoef(s.T)
        d, entry = layer_json(built.path, layer)
        assert [r["unit"] for r in d["units"]] == list(range(s.shape[1]))
        assert entry["dead"] == sum(s[:, u].max() <= 0 for u in range(s.shape[1]))
        live = [u for u in range(s.shape[1]) if s[:, u].max() > 0]
        assert live and len(live) < s.shape[1] or layer == "conv4"  # the tiny fc1 has dead units: shown as dead
        for r in d["units"]:
            u = r["unit"]
            assert r["dead"] == (u not in live)
            assert close(r["max"], s[:, u].max(), scale) and close(r["mean"], s[:, u].mean(), scale)
            means = np.array([s[data.labels == c, u].mean() for c in range(10)])
            assert close(r["class_means"], means, scale)
            if r["dead"]:
                assert r["preferred"] is None and r["selectivity"] is None and "top" not in r
                continue
            rest = (means.sum() - means.max()) / 9
            assert r["preferred"] == int(np.argmax(means))
            assert abs(r["selectivity"] - (means.max() - rest) / (means.max() + rest)) < 1e-6
            top = [i for i in order[:, u] if s[i, u] > 0]  # the top K above 0: images at 0 say nothing of the unit
            assert [t["image"] for t in r["top"]] == top and top
            assert close([t["score"] for t in r["top"]], s[top, u], scale)
            assert [t["label"] for t in r["top"]] == data.labels[top].tolist()
            assert [t["predicted"] for t in r["top"]] == logits[top].argmax(-1).tolist()
            assert r["histogram"] == np.bincount(data.labels[top], minlength=10).tolist()
            assert r["majority"] == int(np.argmax(r["histogram"]))
            assert r["majority_share"] == pytest.approx(max(r["histogram"]) / len(top))
            others = [v for v in live if v != u and np.isfinite(correlation[u, v])]
            shown = [x["unit"] for x in r["similar"]]
            assert len(shown) == min(SIMILAR, len(others))
            # a ratio of sums of float32 scores of other batch shapes: 1e-4 (1e-5 of a score is amplified where
            # a unit's spread is small beside its values)
            assert np.allclose([x["correlation"] for x in r["similar"]], correlation[u, shown], atol=1e-4)
            rest_of = [correlation[u, v] for v in others if v not in shown]
            assert not rest_of or min(correlation[u, shown]) >= max(rest_of) - 1e-4  # the most correlated
            assert r["prev"] == (u - 1 if u else None) and r["next"] == (u + 1 if u + 1 < s.shape[1] else None)


def test_a_sparse_unit_shows_only_its_top_images_above_0(built, setup, tmp_path):
    """A unit above 0 on one image only: its page lists that image, its histogram counts it alone (the images at
    0 that fill its top K, the lowest indices, would outvote it)."""
    from jaxviz.atlas.site import layer_data
    from jaxviz.atlas.statistics import LayerStatistics

    network, data = setup
    found = [LayerStatistics.from_arrays(dict(np.load(p))) for p in cache_folder(built.path).glob("statistics-*.npz")]
    stats = next(s for s in found if s.layer == "fc1")
    u = int(np.flatnonzero(stats.topk_values[0] > 0)[0])
    values = stats.topk_values.copy()
    values[1:, u] = 0.0  # the unit's second and third images at 0
    stats = dataclasses.replace(stats, topk_values=values)
    live = [v for v in range(16) if values[0, v] > 0]
    k = values.shape[0]
    occlusion = {"union": np.unique(stats.topk_index[:, live]), "maps": np.zeros((len(live), k, 2, 2), np.float32)}
    pictures = {"images": np.zeros((len(live), 1, 32, 32, 3), np.uint8), "activation": np.ones((len(live), 1)),
                "predicted": np.zeros((len(live), 1), np.int64), "exemplar_ratio": np.ones(len(live))}
    (tmp_path / "data").mkdir()
    d = layer_data(network, data, "fc1", tuple(range(16)), stats, occlusion, pictures, tmp_path / "data", "fc1")
    r = d["units"][u]
    first = int(stats.topk_index[0, u])
    assert [t["image"] for t in r["top"]] == [first]
    assert r["histogram"] == np.bincount([data.labels[first]], minlength=10).tolist()
    assert r["majority"] == data.labels[first] and r["majority_share"] == 1.0


def test_each_occlusion_map_equals_occlude_on_that_image_for_that_unit(built, setup):
    network, data = setup
    for layer in LAYERS:
        d, entry = layer_json(built.path, layer)
        with np.load(built.path / "data" / f"{entry['file']}.npz") as z:
            maps, live = z["occlusion"], z["live"].tolist()
        pairs = [(u, j, t["image"]) for r in d["units"] if not r["dead"] for u in [r["unit"]]
                 for j, t in enumerate(r["top"])]
        images = np.unique([i for _, _, i in pairs])
        reference = jaxviz.occlude(network.score_fn(layer), network.to_input(data.images[images]),
                                   params=network.variables, window=UNIT_WINDOW, stride=OCCLUSION_STRIDE,
                                   units=live).grid  # (images, R, C, live)
        assert maps.shape == (len(live), SETTINGS["k"], *reference.shape[1:3])
        scale = np.abs(full_scores(network, data, layer)).max()  # a map is a difference of two such scores
        for u, j, i in pairs:
            assert close(maps[live.index(u), j], reference[np.searchsorted(images, i), :, :, live.index(u)], scale)


def test_pictures_equal_visualize_with_their_honesty_numbers(built, setup):
    network, data = setup
    for layer in LAYERS:
        d, _ = layer_json(built.path, layer)
        live = [r for r in d["units"] if not r["dead"]]
        best = full_scores(network, data, layer).max(0)
        for start in range(0, len(live), VIS_PART):  # the build's parts
            part = live[start:start + VIS_PART]
            drawn = jaxviz.visualize(network, layer, [r["unit"] for r in part], steps=SETTINGS["steps"],
                                     batch=SETTINGS["pictures"], seed=0)
            predicted = np.asarray(jaxviz.layer_features(network, drawn.images.reshape(-1, 32, 32, 3))).argmax(-1)
            for p, r in enumerate(part):
                activation = [x["activation"] for x in r["pictures"]]
                assert np.allclose(activation, drawn.activation[p], rtol=1e-5, atol=1e-6)
                assert [x["predicted"] for x in r["pictures"]] == predicted.reshape(len(part), -1)[p].tolist()
                assert r["exemplar_ratio"] == pytest.approx(max(activation) / best[r["unit"]], rel=1e-4)


def test_the_site_is_self_contained_and_its_data_agree(built):
    site = built.path
    manifest = json.loads((site / "atlas.json").read_text())
    assert [e["name"] for e in manifest["layers"]] == list(LAYERS)
    for entry in manifest["layers"]:
        text = (site / "data" / f"{entry['file']}.json").read_text()
        script = (site / "data" / f"{entry['file']}.js").read_text()
        assert script == f"JAXVIZ_ATLAS.data[{json.dumps(entry['name'])}] = {text};\n"
        d = json.loads(text)
        for sprite in d["sprites"].values():
            assert (site / "data" / sprite["file"]).stat().st_size > 0
    for path in site.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".json"):
            assert "http://" not in path.read_text() and "https://" not in path.read_text(), path  # nothing fetched
    assert built.size_bytes == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def test_adding_a_layer_does_not_recompute_the_other(built, setup, tmp_path):
    network, data = setup
    out = tmp_path / "atlas"
    first = _build(network, data, out, ("conv4",))
    shutil.copytree(out, tmp_path / "first")
    cached = {p: p.stat().st_mtime_ns for p in cache_folder(out).iterdir()}
    second = _build(network, data, out, ("conv4", "fc1"))
    assert {("statistics", "conv4"), ("occlusion", "conv4"), ("visualization", "conv4")} <= set(second.reused)
    assert not any(layer == "fc1" for _, layer in second.reused)
    assert all(p.stat().st_mtime_ns == t for p, t in cached.items())  # conv4's stages untouched
    assert first.seconds["statistics"] > 0 and second.seconds["statistics"] > 0
    assert layer_json(out, "conv4")[0] == layer_json(tmp_path / "first", "conv4")[0]
    # fc1 summed alone is another program than fc1 summed beside conv4: equal up to float32 reassociation
    assert_same_numbers(layer_json(out, "fc1")[0]["units"], layer_json(built.path, "fc1")[0]["units"])
    third = _build(network, data, out, ("conv4", "fc1"))  # everything cached: only the site is written
    assert len(third.reused) == 6 and layer_json(out, "fc1")[0] == layer_json(out / ".." / "atlas", "fc1")[0]


def assert_same_numbers(a, b, path="") -> None:
    """Equal JSON values, numbers within 1e-4 (relative, or absolute below 1)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same_numbers(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-4), path
    else:
        assert a == b, path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_build_killed_in_each_stage_in_turn_resumes_to_the_same_site(built, tmp_path):
    """kill -9 in the statistics pass, then (the next process resuming it) in the occlusion, then in the feature
    visualization; the fourth process finishes: the same site, file for file, as the uninterrupted build."""
    out = tmp_path / "atlas"
    cache = cache_folder(out)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    work = {"statistics": "statistics-pass-*/records/record-*.npz", "occlusion": "occlusion-*.work/records/record-*.npz",
            "visualization": "visualization-*.work/part-00000.npz"}
    for stage, record in (("statistics", 1), ("occlusion", 6), ("visualization", 1), (None, 0)):
        options = {"layers": list(LAYERS), **({"die_in": stage, "record": record} if stage else {})}
        done = subprocess.run([sys.executable, str(WORKER), str(out), json.dumps(options)], capture_output=True,
                              text=True, env=env)
        if stage is None:
            assert done.returncode == 0, done.stderr[-2000:]
            break
        assert done.returncode == -9, done.stderr[-2000:]
        assert not out.exists()  # the site is swapped in whole, at the end
        finished = [p.name.split("-")[0] for p in cache.glob("*.npz")]
        assert finished.count(stage) < len(LAYERS), finished  # killed inside the stage, in one of the layers
        assert list(cache.glob(work[stage])), stage  # what it had recorded, resumed by the next process
    assert _tree(out) == _tree(built.path)


def test_bad_input_is_refused_before_any_work(setup, tmp_path):
    network, data = setup
    out = tmp_path / "atlas"
    cases = [
        (dict(layers=["conv9"]), "layers", "unknown layer"),
        (dict(layers=["logits", "logits"]), "layers", "once"),
        (dict(k=31), "k", "at most the dataset's 30 images"),
        (dict(units=[99]), "units", "99"),
        (dict(units=slice(40, 50)), "units", "range"),
        (dict(steps=0), "steps", ""),
        (dict(pictures=0), "pictures", ""),
    ]
    for options, name, words in cases:
        with pytest.raises(ArgumentError) as e:
            jaxviz.build_atlas(network, data, out, **{"layers": ["conv4"], **options})
        assert str(e.value).startswith(f"{name}:") and words in str(e.value), (options, e.value)
    small = jaxviz.Dataset(make_uint8_images(4, seed=0, size=24), np.arange(4), tuple("abcdefghij"))
    with pytest.raises(ArgumentError, match="^dataset:.*got 24x24 images"):
        jaxviz.build_atlas(network, small, out)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="out: refusing to replace.*not a jaxviz atlas"):
        jaxviz.build_atlas(network, data, other)
    assert (other / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no atlas, no cache: nothing was done


def test_the_command_builds_an_atlas_and_refuses_bad_options_in_one_line(tmp_path, tiny_model, tiny_variables,
                                                                        capsys):
    weights, folder, rng = write_tiny_cli_setup(tmp_path, tiny_model, tiny_variables, per_class=4)
    base = ["atlas", "--weights", str(weights), "--data", "folder", "--data-dir", str(folder)]
    out = tmp_path / "site"
    assert main([*base, "--out", str(out), "--layers", "conv4", "--units", "0:3", "--k", "2", "--steps", "2",
                 "--pictures", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layers"] == {"conv4": {"units": 3, "dead": result["layers"]["conv4"]["dead"]}}
    assert (out / "index.html").is_file() and result["index"] == str(out / "index.html")
    for options, words in [(["--layers", "conv9"], ("--layers", "conv9")), (["--k", "13"], ("--k", "12 images")),
                           (["--out", str(folder)], ("--out", "not a jaxviz atlas")),
                           (["--units", "50:60", "--layers", "conv4"], ("--units", "range"))]:
        code = main([*base, *options] if "--out" in options else [*base, "--out", str(tmp_path / "x"), *options])
        assert_one_line_error(code, capsys.readouterr().err, *words)
    big = tmp_path / "big" / "cat"
    big.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(big / "0.png")
    code = main(["atlas", "--weights", str(weights), "--data", "folder", "--data-dir", str(big.parent), "--out",
                 str(tmp_path / "y")])
    assert_one_line_error(code, capsys.readouterr().err, "--data folder", "40x40", "--resize")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---- the site in a real browser ----

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's ``chromium``; Playwright's own download is not reachable here). Missing, the
    tests fail: ``.ci/run`` installs it."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "no chromium on PATH: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("requestfailed", lambda r: page.errors.append(f"failed: {r.url}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    return page


def visible_cards(page) -> list[tuple[str, int]]:
    return [(layer, int(unit)) for layer, unit in page.eval_on_selector_all(
        ".card:not([hidden])", "cards => cards.map(c => [c.dataset.layer, c.dataset.unit])")]


def images_loaded(page) -> list[int]:
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")


def test_index_filters_sorts_hides_dead_and_jumps_in_a_browser(built, browser):
    units = {layer: layer_json(built.path, layer)[0]["units"] for layer in LAYERS}
    page = open_page(browser, (built.path / "index.html").as_uri())
    assert visible_cards(page) == [(layer, r["unit"]) for layer in LAYERS for r in units[layer]]
    assert page.locator(".card.dead").count() == sum(r["dead"] for layer in LAYERS for r in units[layer]) > 0
    preferred = [r["preferred"] for layer in LAYERS for r in units[layer] if r["preferred"] is not None]
    wanted = max(set(preferred), key=preferred.count)
    page.select_option("#filter-class", str(wanted))
    assert visible_cards(page) == [(layer, r["unit"]) for layer in LAYERS for r in units[layer]
                                   if r["preferred"] == wanted]
    page.select_option("#filter-class", "")
    page.check("#hide-dead")
    page.select_option("#sort", "selectivity")

    def by_selectivity(r):  # ties: the larger mean of the preferred class first, then the unit number
        return (-r["selectivity"], -r["class_means"][r["preferred"]], r["unit"])

    assert visible_cards(page) == [(layer, r["unit"]) for layer in LAYERS
                                   for r in sorted((r for r in units[layer] if not r["dead"]), key=by_selectivity)]
    page.select_option("#sort", "activation")
    assert visible_cards(page) == [(layer, r["unit"]) for layer in LAYERS for r in
                                   sorted((r for r in units[layer] if not r["dead"]), key=lambda r: (-r["max"], r["unit"]))]
    assert all(w > 0 for w in images_loaded(page))
    page.select_option("#jump-layer", "fc1")
    page.fill("#jump-unit", "99")
    page.click("#jump button")
    assert page.text_content("#jump-message") == "no unit 99 shown in fc1"
    page.fill("#jump-unit", "3")
    page.click("#jump button")
    page.wait_for_selector("body[data-ready=true]")
    assert page.url.endswith("unit.html?layer=fc1&unit=3")
    assert page.errors == []


def test_a_unit_page_shows_the_json_numbers_and_its_links_work_in_a_browser(built, browser):
    d, _ = layer_json(built.path, "fc1")
    r = next(r for r in d["units"] if not r["dead"] and r["similar"] and r["prev"] is not None)
    page = open_page(browser, (built.path / f"unit.html?layer=fc1&unit={r['unit']}").as_uri()
                     .replace("%3F", "?").replace("%3D", "=").replace("%26", "&"))
    widths = images_loaded(page)
    assert len(widths) == len(r["pictures"]) + 2 * len(r["top"]) and all(w > 0 for w in widths)

    def field(name):
        return page.text_content(f'[data-field="{name}"]')

    for name in ("max", "mean", "selectivity", "majority_share", "exemplar_ratio"):
        assert float(field(name)) == pytest.approx(r[name], abs=6e-5), name
    assert field("preferred") == "abcdefghij"[r["preferred"]] and field("majority") == "abcdefghij"[r["majority"]]
    shown = page.eval_on_selector_all('[data-field="histogram"] td.value', "cells => cells.map(c => c.textContent)")
    assert [int(x) for x in shown] == r["histogram"]
    means = page.eval_on_selector_all('[data-field="class_means"] td.value', "cells => cells.map(c => c.textContent)")
    assert np.allclose([float(x) for x in means], r["class_means"], rtol=1e-3, atol=1e-9)
    assert page.eval_on_selector_all("#top-images figure", "f => f.map(x => Number(x.dataset.image))") == \
        [t["image"] for t in r["top"]]
    title = page.text_content("#unit-title")
    page.click(f'#similar a[data-unit="{r["similar"][0]["unit"]}"]')
    page.wait_for_selector("body[data-ready=true]")
    assert page.text_content("#unit-title") == f"fc1, unit {r['similar'][0]['unit']}" + \
        (" (dead)" if d["units"][r["similar"][0]["unit"]]["dead"] else "")
    page.go_back()
    page.wait_for_selector("body[data-ready=true]")
    assert page.text_content("#unit-title") == title
    page.click("#prev")
    page.wait_for_selector("body[data-ready=true]")
    assert page.text_content("#unit-title").startswith(f"fc1, unit {r['prev']}")
    assert page.errors == []


def test_the_site_opens_from_a_web_server_too(built, browser):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built.path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.server_address[1]}/index.html")
        assert all(w > 0 for w in images_loaded(page)) and page.locator(".card").count() == sum(
            len(layer_json(built.path, layer)[0]["units"]) for layer in LAYERS)
        assert page.errors == []
    finally:
        server.shutdown()


@pytest.mark.slow
def test_the_benchmark_dry_run():
    from benchmarks import atlas as benchmark

    record = benchmark.main(["--dry-run", "--gpu"])  # the GPU claim's preset, at tiny sizes, on the CPU
    row = record["rows"]["whole_dataset"]
    assert list(row["layers"]) == ["fc1"] and row["layers"]["fc1"]["units"] == 2  # the dry run: one layer
    assert row["wall_seconds"] > 0 and row["peak_rss_MB"] > 0 and row["site_MB"] > 0
