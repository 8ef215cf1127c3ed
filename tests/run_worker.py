"""A dataset run in its own process, for the tests that kill, limit or multiply processes (test_runs.py).

    python tests/run_worker.py OUT '{"n": 24, "images_per_step": 4, ...}'

Options (JSON): ``n`` images of the tiny CNN's random data; ``run`` keyword
arguments for ``run_dataset``; ``delay`` seconds of sleep per block read (a
slow disk, so a kill lands mid-run); ``limit_at_step`` / ``limit_bytes``: set
RLIMIT_FSIZE (what ``ulimit -f`` sets) when that block is read, a disk that
fills up mid-run; ``coordinator``, ``num_processes``, ``process_id``:
``initialize_distributed``; ``die_at_step``: this process kills itself with
SIGKILL when it reads that block; ``raise_at_step``: an exception there.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Source:
    """uint8 images read block by block, with the slow-disk, full-disk and dying-process hooks."""

    def __init__(self, images, options: dict, batch: int):
        self.data, self.options, self.batch = images, options, batch
        self.shape, self.dtype = images.shape, images.dtype

    def __getitem__(self, index):
        if isinstance(index, slice) and index.stop - index.start > 1:  # a block, not the fingerprint rows
            step = index.start // self.batch
            if step == self.options.get("limit_at_step"):
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.options["limit_bytes"],) * 2)
            if step == self.options.get("die_at_step"):
                os.kill(os.getpid(), signal.SIGKILL)
            if step == self.options.get("raise_at_step"):
                raise RuntimeError("the disk went away")
            time.sleep(self.options.get("delay", 0.0))
        return self.data[index]


def main() -> None:
    out, options = sys.argv[1], json.loads(sys.argv[2])
    import jax

    import jaxviz

    from conftest import make_tiny_model, make_uint8_images, randomize_variables

    if options.get("num_processes"):
        jaxviz.initialize_distributed(options["coordinator"], options["num_processes"], options["process_id"],
                                      heartbeat_timeout=options.get("heartbeat_timeout", 10))
    model = make_tiny_model()
    variables = randomize_variables(jaxviz.init_variables(model, jax.random.key(0)), seed=0)
    network = jaxviz.from_cnn(model, variables, class_names=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    run_options = {"progress": False, **options.get("run", {})}
    source = Source(make_uint8_images(options["n"], seed=5), options, run_options.get("images_per_step", 64))
    run = jaxviz.run_dataset(network, source, out, **run_options)
    print(json.dumps({"process": jax.process_index(), "complete": run.complete, "summary": run.summary}))


if __name__ == "__main__":
    main()
