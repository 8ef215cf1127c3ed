"""Dataset-scale occlusion runs (``jaxviz.run_dataset``): throughput with writing included, memory, processes.

    python -m benchmarks.dataset_runs [--data-dir DIR] [--sizes 1000,2000,5000,10000] [--quick] [--gpu]

Claims, on the CIFAR-10 test set (``--data-dir``: a folder with the official
binary layout, e.g. made by ``tools/folder_to_cifar_binary.py`` from the JPEG
copy in ../shared/data; without it, the embedded 1,000-image sample repeated),
occluding for every one of ``fc1``'s 512 units:

  1. Aggregates only (no grid), window 8 stride 4 (49 positions): the run's
     occlusion forwards per second, writing and the completion records
     included, reach >= 0.85x a plain jitted forward of ``fc1`` on batches of
     the run's own size per call, at 1k, 2k, 5k and 10k images.
  2. Its peak resident memory does not grow with the number of images.
  3. Window 5 stride 2 (225 positions, centred), 1k images: the same ratio.
  4. With the full grid kept (49 x 512 floats per image): throughput with
     writing included, and MB/s written.
  5. One process against two on this machine (each one CPU device,
     ``jax.distributed`` on localhost).

Each row runs in a fresh process: a warm-up run of two steps (compiles the
step programs), then the timed run into an empty directory, with the
process's resident memory sampled every 5 ms (growth over the memory before
the timed run, and the absolute peak). The plain forward is timed just
before and just after the run (each the median of 3 timings of enough
batches for about 5 s, ended by ``jax.block_until_ready``); the ratios use
the mean of the two. Images are read from a .npy file with plain reads
(no memory map), so the dataset is not in memory either. ``forwards`` counts
the occluded copies (N x positions); pass 1 (one forward of every image
for the scores, the top-K and the predicted class) is in the whole-run rate.
``--gpu``: the moonshot workload, the whole test set at stride 1 (window 5,
1,024 positions: 10.24 M forwards), and window 8 stride 4, with larger steps.
Writes benchmarks/results/dataset_runs_<backend>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._env import ROOT, environment, machine_line

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "fc1"
RATIO_BAR = 0.85


class NpyRows:
    """Rows of a uint8 (N, H, W, C) .npy file, read on demand with plain file reads (no memory map)."""

    def __init__(self, path: Path, n: int | None = None):
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            self.offset = fh.tell()
        self.path, self.dtype = path, np.dtype(dtype)
        self.shape = (shape[0] if n is None else n, *shape[1:])
        self.row = int(np.prod(shape[1:]))

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.shape[0])
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        if out.size:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset + start * self.row)
                fh.readinto(memoryview(out).cast("B"))
        return out


def plain_forward_rate(network, images: np.ndarray, batch: int, seconds: float = 5.0) -> dict:
    """Median forwards/s of the jitted layer on ``batch``-image batches (3 timings of ~``seconds`` each)."""
    import jax

    f = jax.jit(network.score_fn(LAYER))
    x = jax.device_put(network.to_input(np.resize(images, (batch, *images.shape[1:]))))
    jax.block_until_ready(f(network.variables, x))
    start = time.perf_counter()
    jax.block_until_ready(f(network.variables, x))
    calls = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            out = f(network.variables, x)
        jax.block_until_ready(out)
        rates.append(calls * batch / (time.perf_counter() - start))
    return {"forwards_per_s": float(np.median(rates)), "batch": batch, "calls": calls, "rates": rates}


def row(spec: dict) -> dict:
    """One measurement in this (fresh) process; with ``coordinator``, one process of several."""
    if spec.get("num_processes", 1) > 1:
        import jaxviz

        jaxviz.initialize_distributed(spec["coordinator"], spec["num_processes"], spec["process_id"])
    import jax

    import jaxviz
    from benchmarks.occlusion import PeakRSS

    network = jaxviz.load_pretrained().network
    images = NpyRows(Path(spec["npy"]), spec["images"])
    options = dict(layer=LAYER, window=spec["window"], stride=spec["stride"], keep_grid=spec["keep_grid"],
                   images_per_step=spec["images_per_step"], progress=False)
    # a directory per row: a finished run with equal settings would be resumed, i.e. not run at all
    work = Path(spec["work"]) / "".join(c if c.isalnum() else "-" for c in
                                        f"{spec['name']}-{spec['images']}-{spec.get('num_processes', 1)}")
    warm = NpyRows(Path(spec["npy"]), 2 * spec["images_per_step"])
    warm_run = jaxviz.run_dataset(network, warm, work / "warm-up", overwrite=True, **options)
    batch = warm_run.summary["pairs_per_call"]
    plain = [plain_forward_rate(network, images[0:256], batch)] if spec.get("plain", True) else []
    with PeakRSS() as mem:
        start = time.perf_counter()
        run = jaxviz.run_dataset(network, images, work / "run", overwrite=True, **options)
        wall = time.perf_counter() - start
    if jax.process_index() != 0:
        return {}
    summary = run.summary
    forwards = summary["forwards"]
    result = {**{k: spec[k] for k in ("name", "images", "window", "stride", "keep_grid", "images_per_step")},
              "processes": summary["processes"], "devices": summary["devices"],
              "positions": summary["masks_per_image"], "units": 512, "forwards": forwards,
              "wall_seconds": wall, "whole_run_forwards_per_s": forwards / wall,
              "pass2_forwards_per_s": summary["forwards_per_s"], "seconds": summary["seconds"],
              "pairs_per_call": summary["pairs_per_call"], "rss_before_MB": mem.start / 2**20,
              "rss_peak_MB": mem.peak / 2**20, "rss_growth_MB": (mem.peak - mem.start) / 2**20,
              "grid_MB": summary["grid_bytes"] / 1e6, "grid_MB_per_s": summary["grid_MB_per_s"],
              "store_MB": sum(p.stat().st_size for p in (work / "run").rglob("*") if p.is_file()) / 1e6}
    if plain:  # measured before and after the run: the machine's speed drifts
        plain.append(plain_forward_rate(network, images[0:256], batch))
        rate = float(np.mean([p["forwards_per_s"] for p in plain]))
        result["plain_forward"] = {"forwards_per_s": rate, "before_and_after": plain}
        result["ratio_pass2"] = result["pass2_forwards_per_s"] / rate
        result["ratio_whole_run"] = result["whole_run_forwards_per_s"] / rate
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, processes: int = 1, devices: int = 1) -> dict:
    """Run ``row(spec)`` in fresh processes; process 0's result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAXVIZ_PROGRESS": "0"}
    if spec.get("backend", "cpu") == "cpu":
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    port = _free_port()
    procs = []
    for i in range(processes):
        s = {**spec, "num_processes": processes, "process_id": i, "coordinator": f"127.0.0.1:{port}"}
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.dataset_runs", "--row", json.dumps(s)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"row {spec['name']} failed:\n{err[-3000:]}")
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    print(json.dumps({k: result.get(k) for k in ("name", "images", "processes", "whole_run_forwards_per_s",
                                                  "ratio_whole_run", "ratio_pass2", "rss_growth_MB")}), flush=True)
    return result


def images_file(data_dir: str | None, n: int, path: Path) -> str:
    """The first ``n`` test images (or the sample repeated) as a .npy file; returns where they came from."""
    import jaxviz

    if data_dir:
        data = jaxviz.load_cifar10("test", data_dir=data_dir, download=False)
        source = f"CIFAR-10 test set from {data_dir} ({len(data)} images)"
    else:
        data = jaxviz.load_sample()
        source = "the embedded 1,000-image sample, repeated"
    np.save(path, np.resize(data.images, (n, *data.images.shape[1:])))
    return source


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"Dataset runs: {machine_line(env)}.",
             f"Data: {record['data']}. f = the pretrained CNN up to {LAYER}, all 512 units; "
             f"one fresh process per row.", "",
             "| row | images | positions | grid kept | processes | forwards | whole run s | forwards/s (whole run) "
             "| plain forward /s | ratio whole run | ratio pass 2 | peak RSS MB | RSS growth MB | grid MB/s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        plain = r.get("plain_forward", {}).get("forwards_per_s")
        lines.append(
            f"| {r['name']} | {r['images']:,} | {r['positions']} | {'yes' if r['keep_grid'] else 'no'} | "
            f"{r['processes']} | {r['forwards']:,} | {r['wall_seconds']:.1f} | {r['whole_run_forwards_per_s']:,.0f} | "
            f"{_number(plain, ',.0f')} | {_number(r.get('ratio_whole_run'), '.2f')} | "
            f"{_number(r.get('ratio_pass2'), '.2f')} | {r['rss_peak_MB']:.0f} | {r['rss_growth_MB']:.0f} | "
            f"{_number(r['grid_MB_per_s'], '.1f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help="CIFAR-10 in the official binary layout (default: the sample, repeated)")
    parser.add_argument("--sizes", default="1000,2000,5000,10000", help="dataset sizes of claim 1")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--gpu", action="store_true", help="the moonshot workload, for an accelerator")
    parser.add_argument("--processes-only", action="store_true",
                        help="only claim 5 (1 vs 2 processes, the second size), into dataset_runs_processes_<backend>")
    parser.add_argument("--out", help="output stem (default: results/dataset_runs_<backend>)")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(row(json.loads(args.row))))
        return
    import jax

    backend = "gpu" if args.gpu else "cpu"
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [64, 128]
    with tempfile.TemporaryDirectory(prefix="jaxviz-bench-") as tmp:
        npy = Path(tmp) / "images.npy"
        data = images_file(args.data_dir, max(sizes + [10000 if args.gpu else 0]), npy)
        base = {"npy": str(npy), "work": str(Path(tmp) / "work"), "keep_grid": False, "backend": backend,
                "images_per_step": 256 if args.gpu else 64}
        rows = []
        two = {**base, "name": "window 8 stride 4, 2 processes", "images": sizes[min(1, len(sizes) - 1)],
               "window": 8, "stride": 4, "plain": False}
        if args.processes_only:
            rows.append(launch({**two, "name": "window 8 stride 4, 1 process"}))
            rows.append(launch(two, processes=2))
        elif args.gpu:
            rows.append(launch({**base, "name": "moonshot: window 5 stride 1", "images": 10000, "window": 5,
                                "stride": 1, "images_per_step": 128}))
            rows.append(launch({**base, "name": "window 8 stride 4", "images": 10000, "window": 8, "stride": 4}))
        else:
            for n in sizes:
                rows.append(launch({**base, "name": "window 8 stride 4", "images": n, "window": 8, "stride": 4}))
            n = sizes[0]
            rows.append(launch({**base, "name": "window 5 stride 2", "images": n, "window": 5, "stride": 2}))
            rows.append(launch({**base, "name": "window 8 stride 4, grid kept", "images": n, "window": 8,
                                "stride": 4, "keep_grid": True}))
            rows.append(launch(two, processes=2))
        record = {"claims": __doc__, "environment": environment(), "data": data, "rows": rows,
                  "ratio_bar": RATIO_BAR, "jax_backend": jax.default_backend()}
    kind = "dataset_runs_processes" if args.processes_only else "dataset_runs"
    stem = Path(args.out) if args.out else RESULTS / f"{kind}_{backend}{'_quick' if args.quick else ''}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
