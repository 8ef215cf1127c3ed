"""``--all``: ``jaxviz occlude --all`` and ``jaxviz attribute --all`` run a method over the whole dataset into a
resumable store (``jaxviz.run_dataset``), as one process or as many (``jax.distributed``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import typing

import jax
import numpy as np

import jaxviz
from jaxviz.checks import ArgumentError
from jaxviz.cli._options import as_option, check_writable, load, positive_int

__all__ = ["add_process_options", "add_run_options", "check_run_options", "processes", "run_all", "stdout_to_stderr"]


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("whole dataset (--all)")
    g.add_argument("--all", action="store_true",
                   help="run over every image of --data into the store --out (resumable: start the same command "
                        "again after a kill); read it back with jaxviz.open_run(OUT)")
    g.add_argument("--keep-grid", action="store_true",
                   help="with --all: also write every map (N x positions x units floats), not only the aggregates")
    g.add_argument("--images-per-step", type=positive_int, default=64,
                   help="with --all: images per step and per completion record (default: 64; at most the "
                        "number of images)")
    g.add_argument("--overwrite", action="store_true",
                   help="with --all: start afresh: replace a run in --out made with other settings (or a damaged "
                        "one) instead of refusing or resuming")
    add_process_options(p, "with --all; ")


def add_process_options(p: argparse.ArgumentParser, when: str = "") -> None:
    """The ``jax.distributed`` options (``--coordinator``, ``--num-processes``, ...), read by ``processes``."""
    d = p.add_argument_group(f"many processes ({when}every process runs the same command)")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which listens there")
    d.add_argument("--num-processes", type=positive_int, help="how many processes take part")
    d.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    d.add_argument("--distributed", action="store_true",
                   help="take the process layout from the cluster (SLURM, Open MPI, Kubernetes, TPU pod) instead")
    d.add_argument("--heartbeat-timeout", type=positive_int, default=100,
                   help="seconds after which a silent process counts as dead and the others stop (default: 100)")


def check_run_options(args) -> None:
    """Run options without ``--all`` are mistakes: refuse them before any work."""
    if args.all:
        return
    for option, value in (("--keep-grid", args.keep_grid), ("--overwrite", args.overwrite),
                          ("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                          ("--process-id", args.process_id), ("--distributed", args.distributed)):
        if value not in (None, False):
            raise ArgumentError(f"{option}", "only with --all (a run over the whole dataset)")


def _as_options(e: Exception, options: typing.Mapping[str, str] | None = None) -> Exception:
    """An error of ``initialize_distributed`` or ``run_dataset`` naming the options, not the arguments
    (``options``: the command's own argument -> option names, as ``as_option`` takes them)."""
    e = as_option(e, ("out", "images_per_step", "keep_grid", "overwrite"), options)
    message = re.sub(r"\b(coordinator|num_processes|process_id|heartbeat_timeout)\b",
                     lambda m: "--" + m.group(1).replace("_", "-"), str(e))
    message = message.replace("auto:", "--distributed:", 1).replace("overwrite=True", "--overwrite")
    return type(e)(message)


@contextlib.contextmanager
def stdout_to_stderr():
    """Everything written to stdout (fd 1: JAX's and Gloo's connection messages too) goes to stderr meanwhile,
    so that stdout holds only the result."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_all(args, method: str, choose, options: typing.Mapping[str, str] | None = None) -> None:
    """Start (or join) the processes, load the model and data, and run ``method`` over every image; print the
    result (JSON, process 0) on stdout, where nothing else is written.

    ``choose(data, network)`` checks the command's own options once the model is loaded and returns
    ``run_dataset``'s keyword arguments (layer, units, fill, the method's options). ``options`` maps the
    command's other arguments to their options, so that run_dataset's errors name them (``as_option``).
    """
    with stdout_to_stderr():
        result = _run(args, method, choose, options)
    if result is not None:
        print(json.dumps(result, allow_nan=False, default=_plain), flush=True)


@contextlib.contextmanager
def processes(args):
    """Start (or join) the processes of ``add_process_options``; yields whether there are several. In several
    processes an error makes this one leave at once (one line on stderr, exit 2 for a user error): the others
    then stop within --heartbeat-timeout instead of waiting in a collective."""
    try:
        multi = jaxviz.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                              auto=args.distributed, heartbeat_timeout=args.heartbeat_timeout)
    except ValueError as e:
        raise _as_options(e) from None
    try:
        yield multi
    except BaseException as e:
        if not multi:
            raise
        user = isinstance(e, (ValueError, TypeError, OSError))
        print(f"jaxviz {args.command}: error: process {jax.process_index()}: "
              f"{e if user else f'{type(e).__name__}: {e}'}", file=sys.stderr, flush=True)
        os._exit(2 if user else 1)


def _run(args, method: str, choose, names: typing.Mapping[str, str] | None) -> dict | None:
    with processes(args) as multi:
        if jax.process_index() == 0:
            check_writable(args.out, directory=True, option="--out")
        data, network = load(args)
        options = choose(data, network)
        try:
            run = jaxviz.run_dataset(network, data.images, args.out, method=method, keep_grid=args.keep_grid,
                                     images_per_step=args.images_per_step, overwrite=args.overwrite, progress=True,
                                     **options)
        except (ValueError, TypeError, OSError) as e:  # named before a multi-process run reports it
            raise _as_options(e, names) from None
    layer = options.get("layer") or network.output_layer
    if jax.process_index() != 0:
        return None
    return {"run": str(run.path), "complete": run.complete, "method": method, "layer": layer,
            "images": run.settings["images"], "processes": jax.process_count(), "multi_process": multi,
            "summary": run.summary}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)
