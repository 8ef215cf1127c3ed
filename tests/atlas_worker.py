"""An atlas build in its own process, for the tests that kill it (test_atlas.py).

    python tests/atlas_worker.py OUT '{"layers": ["conv4"], "die_in": "occlusion"}'

It builds the tiny atlas of ``tiny_atlas_setup`` (the same network, data and settings as the tests' in-process
build). ``die_in``: this process kills itself with SIGKILL right after the named stage has recorded its first
step (statistics, occlusion) or part (visualization): a ``kill -9`` in the middle of that stage. ``coordinator``, ``num_processes``, ``process_id``: one of several processes
(``initialize_distributed``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxviz  # noqa: E402
from jaxviz.atlas import build  # noqa: E402
from jaxviz.models.cnn import init_variables  # noqa: E402

from conftest import make_tiny_model, make_uint8_images, randomize_variables  # noqa: E402

CLASSES = tuple("abcdefghij")
SETTINGS = {"k": 3, "steps": 6, "pictures": 2, "images_per_step": 8}
VIS_PART = 6  # units per recorded part (the product's is 64), so that the tiny fc1 has several parts


def tiny_atlas_setup(n: int = 30) -> tuple[jaxviz.Network, jaxviz.Dataset]:
    model = make_tiny_model()
    network = jaxviz.from_cnn(model, randomize_variables(init_variables(model, jax.random.key(0)), seed=0), CLASSES)
    return network, jaxviz.Dataset(make_uint8_images(n, seed=5), np.arange(n) % 10, CLASSES, source="tiny")


def _die_after(stage: str, record: int) -> None:
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if stage in ("statistics", "occlusion"):
        save_record = jaxviz.runs.store.save_record
        folder_word = "statistics-pass" if stage == "statistics" else "occlusion-"

        def save_and_die(root, step, arrays):
            save_record(root, step, arrays)
            if folder_word in str(root) and step >= record:
                die()

        jaxviz.runs.store.save_record = save_and_die
    else:
        save = build._save_npz

        def save_and_die(path, arrays):
            save(path, arrays)
            if path.name.startswith("part-"):
                die()

        build._save_npz = save_and_die


def main() -> None:
    out, options = sys.argv[1], json.loads(sys.argv[2])
    build.VIS_PART = VIS_PART
    if options.get("num_processes"):
        jaxviz.initialize_distributed(options["coordinator"], options["num_processes"], options["process_id"],
                                      heartbeat_timeout=30)
    if options.get("die_in"):
        _die_after(options["die_in"], options.get("record", 1))
    network, data = tiny_atlas_setup()
    atlas = jaxviz.build_atlas(network, data, out, layers=options["layers"], progress=False, **SETTINGS)
    print(json.dumps({"reused": [list(r) for r in atlas.reused]}))


if __name__ == "__main__":
    main()
