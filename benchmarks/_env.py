"""Machine, versions and git commit, recorded with every benchmark result."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    import jax

    devices = jax.devices()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(getattr(d, "device_kind", d)) for d in devices],
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "captum")},
    }


def machine_line(env: dict, packages: tuple[str, ...] = ("jax",)) -> str:
    """``CPU (n cores), backend B DEVICE, jax X, commit C, DATE``: the first line of a results page."""
    versions = ", ".join(f"{p} {env['versions'][p]}" for p in packages)
    commit = env["git_commit"]
    return (f"{env['cpu']} ({env['cpu_count']} cores), backend {env['jax_backend']} {env['devices'][0]}, {versions}, "
            f"commit {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}, {env['date']}")


def benchmark_parser(description: str):
    """The options every benchmark of the method families shares: --quick, --gpu, --no-captum, --repeats."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--gpu", action="store_true", help="bigger sizes, for an accelerator")
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 3; 1 with --quick)")
    return parser
