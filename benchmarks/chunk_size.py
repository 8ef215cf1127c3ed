"""Fused occlusion throughput against chunk size: what default memory budget suits this backend?

    python -m benchmarks.chunk_size

Workload: 40 sample images, window 8, stride 2 (valid), f = the pretrained
CNN up to fc1; chunk sizes 64 .. 4096 and the default (``memory_budget``
unset); median of 3 timed calls after a warm-up. Writes
benchmarks/results/chunk_size_<backend>.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax

import jaxviz
from benchmarks._env import environment


def main() -> None:
    weights = jaxviz.load_pretrained()
    variables = jax.device_put(weights.variables)
    f = weights.network.layer_fn("fc1")
    x = weights.network.to_input(jaxviz.load_sample().images[:40])
    rows = []
    for chunk in (64, 128, 256, 512, 1024, 2048, 4096, None):
        run = lambda chunk=chunk: jaxviz.occlude(f, x, params=variables, window=8, stride=2, anchor="valid",
                                                 chunk_size=chunk)
        used = run().chunk_size
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({"chunk_size_asked": chunk, "chunk_size_used": used, "median_seconds": median,
                     "forwards_per_second": 40 * 169 / median})
        print(rows[-1], flush=True)
    record = {"question": "which chunk size is fastest for the fused engine on this backend?", "rows": rows,
              "environment": environment(), "command": "python -m benchmarks.chunk_size"}
    out = Path(__file__).resolve().parent / "results" / f"chunk_size_{jax.default_backend()}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
