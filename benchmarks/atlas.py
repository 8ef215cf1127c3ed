"""The atlas: wall time per stage, peak memory against the number of images, and the site's size.

    python -m benchmarks.atlas --data-dir DIR      # DIR: the 10,000 CIFAR-10 test images as DIR/<class>/*.jpg
    python -m benchmarks.atlas --gpu --data-dir DIR
    python -m benchmarks.atlas --dry-run           # tiny sizes, nothing written (a test runs it on the CPU)

Every build is ``jaxviz atlas`` (what users run) in its own process, with a fresh cache (nothing reused); wall
time is the process's, compile included; the stage split is the build's own (``Atlas.seconds``); the peak RSS is
the process's (``ru_maxrss``). Claims, on the 2-core CPU:

1. the atlas of conv6 + fc1 (640 units) of the pretrained CNN over the 10,000 test images, k = 16, 256 steps:
   under 15 minutes (goal), and its site under 30 MB;
2. the embedded-sample atlas (``jaxviz atlas --out DIR``, every default): under 5 minutes (goal);
3. peak RSS flat in the number of images: the same build (64 units per layer, 1 step: the stages that stream
   the data) over 2,500 and 10,000 images. The images are held in memory (a ``Dataset``: 3 KB each), so
   that much growth is the data's, not the build's.

``--gpu``: claim 1 with two pictures per unit, goal under 60 s on one H100/H200.
Writes benchmarks/results/atlas_<backend>[_gpu].json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks._env import environment, git_commit

HERE = Path(__file__).resolve().parent


def _child(argv: list[str]) -> None:
    """Run ``jaxviz atlas ARGV`` here; print its result and this process's peak RSS as one JSON line."""
    import contextlib
    import io

    from jaxviz.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["atlas", *argv])
    result = json.loads(out.getvalue().strip().splitlines()[-1]) if code == 0 else None
    print(json.dumps({"code": code, "result": result,
                      "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def build(argv: list[str], out: Path, keep: Path | None = None) -> dict:
    """One ``jaxviz atlas`` process from scratch (its site and cache removed first); the site is copied to
    ``keep / out.name`` when ``keep`` is given."""
    for path in (out, out.with_name(f".{out.name}.atlas-cache")):
        shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.atlas", "--child", *argv, "--out", str(out)],
                          capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"jaxviz atlas {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    line = json.loads(done.stdout.strip().splitlines()[-1])
    if line["code"] != 0:
        raise SystemExit(f"jaxviz atlas {' '.join(argv)} exited {line['code']}:\n{done.stderr[-3000:]}")
    site = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    row = {"command": "jaxviz atlas " + " ".join(argv), "git_commit": git_commit(), "wall_seconds": wall, "stage_seconds": line["result"]["seconds"],
           "layers": line["result"]["layers"], "site_MB": site / 1e6, "peak_rss_MB": line["peak_rss_MB"]}
    print(json.dumps(row), flush=True)
    if keep is not None:
        shutil.copytree(out, keep / out.name, dirs_exist_ok=True)
    return row


def _subset(data_dir: str, n: int, root: Path) -> Path:
    """The first ``n // 10`` images of each class folder of ``data_dir``, linked into a new folder."""
    folder = root / f"subset-{n}"
    for klass in sorted(p for p in Path(data_dir).iterdir() if p.is_dir()):
        (folder / klass.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(klass.iterdir())[:n // 10]:
            (folder / klass.name / image.name).symlink_to(image.resolve())
    return folder


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1:])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the 10,000 CIFAR-10 test images, DIR/<class>/*.jpg")
    parser.add_argument("--layers", default="conv6,fc1")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--pictures", type=int, default=1, help="pictures per unit of claim 1 (its cost is linear in it)")
    parser.add_argument("--gpu", action="store_true", help="claim 1 with two pictures per unit, on a GPU")
    parser.add_argument("--dry-run", action="store_true", help="the embedded sample's first images, 2 units, 2 steps")
    parser.add_argument("--keep", type=Path, help="copy the two sites into this folder (e.g. for screenshots)")
    parser.add_argument("--rows", default="whole_dataset,sample_defaults,memory",
                        help="the claims to measure; the others' rows are kept from the results file (each row "
                             "records its commit)")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.data_dir:
        parser.error("--data-dir: required (the CIFAR-10 test images as DIR/<class>/*.jpg), except with --dry-run")
    pictures = 2 if args.gpu else args.pictures
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.dry_run:  # the preset's builds (--gpu: the whole-dataset one only) at tiny sizes on the sample
            tiny = ["--units", "0:2", "--steps", "2", "--k", "2", "--pictures", "1", "--images-per-step", "8"]
            rows = {"whole_dataset": build(["--layers", args.layers.split(",")[-1], *tiny], root / "a")}
            if not args.gpu:
                rows["sample_defaults"] = build(tiny, root / "b")
                rows["memory"] = [build(["--layers", args.layers, *tiny], root / "c")]
        else:
            data = ["--data", "folder", "--data-dir", args.data_dir]
            wanted = set(args.rows.split(",")) if not args.gpu else {"whole_dataset"}
            name = f"atlas_{jax.default_backend()}{'_gpu' if args.gpu else ''}.json"
            earlier = HERE / "results" / name
            rows = json.loads(earlier.read_text())["rows"] if earlier.exists() else {}
            if "whole_dataset" in wanted:
                rows["whole_dataset"] = build([*data, "--layers", args.layers, "--k", str(args.k), "--steps",
                                               str(args.steps), "--pictures", str(pictures)], root / "atlas", args.keep)
            if "sample_defaults" in wanted:
                rows["sample_defaults"] = build([], root / "sample", args.keep)
            if "memory" in wanted:
                probe = ["--layers", args.layers, "--units", "0:64", "--steps", "1", "--pictures", "1"]
                rows["memory"] = [build(["--data", "folder", "--data-dir", str(_subset(args.data_dir, n, root)), *probe],
                                        root / f"memory-{n}") for n in (2500, 10000)]
    record = {"claims": {"whole_dataset": "the atlas of conv6 + fc1 over the 10,000 CIFAR-10 test images: under 15 "
                                          "minutes on the 2-core CPU (under 60 s on one H100/H200 with --gpu); site "
                                          "under 30 MB",
                         "sample_defaults": "jaxviz atlas --out DIR (the embedded sample, every default): under 5 "
                                            "minutes on the 2-core CPU",
                         "memory": "peak RSS flat in the number of images (2,500 against 10,000), beside the "
                                   "images held in memory (3 KB each)"},
              "rows": rows, "environment": environment(),
              "command": " ".join(["python -m benchmarks.atlas", *argv])}
    if not args.dry_run:
        (HERE / "results" / name).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
