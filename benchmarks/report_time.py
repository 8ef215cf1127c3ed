"""Wall time of the main job, `jaxviz report`, on the embedded defaults (a fresh process: compilation included).

    python -m benchmarks.report_time [--out DIR]

Claim: on this 2-core CPU the default report finishes in under 90 seconds.
Writes benchmarks/results/report_time_<backend>.json and copies the report's
figures used by the README to docs/images/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks._env import environment

ROOT = Path(__file__).resolve().parents[1]
README_FIGURES = ("topk.png", "selectivity.png", "occlusion_masks.png", "occlusion_heatmaps.png", "tsne.png",
                  "confusion.png", "filters_conv1.png", "activations_conv1.png", "trust.png", "sanity.png",
                  "visualizations.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="jaxviz-report-"))
    env = {**os.environ, "JAXVIZ_PROGRESS": "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxviz.cli", "report", "--out", str(out)], check=True, env=env)
    wall = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    record = {"claim": "the default `jaxviz report` finishes in under 90 s on a 2-core CPU, compilation included",
              "command": "jaxviz report --out DIR", "wall_seconds": wall,
              "stage_seconds": results["timings_seconds"], "units_shown": results["units"]["shown"],
              "accuracy_on_sample": results["evaluation"]["accuracy"], "environment": environment()}
    target = ROOT / "benchmarks" / "results" / f"report_time_{jax.default_backend()}.json"
    target.write_text(json.dumps(record, indent=2) + "\n")
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in README_FIGURES:
        shutil.copy(out / name, images / name)
    print(json.dumps({"wall_seconds": round(wall, 1), "report": str(out / "index.html")}))


if __name__ == "__main__":
    main()
