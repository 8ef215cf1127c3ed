"""Joining a multi-process run: ``jax.distributed.initialize`` with checked arguments.

Every process runs the same command; JAX's coordination service (on process
0's ``HOST:PORT``) connects them, and ``jax.devices()`` then lists the
devices of every process, so ``run_dataset``'s mesh spans all of them. On
SLURM, Open MPI, Kubernetes and Cloud TPU pods JAX reads the process layout
from the environment (``auto=True``). When a process dies, the others stop
within ``heartbeat_timeout`` seconds with JAX's message "Terminating process
because the JAX distributed service detected fatal errors ... another task
died", instead of waiting forever.
"""

from __future__ import annotations

import re
from typing import Any

import jax

from jaxviz.checks import ArgumentError, check_int

__all__ = ["initialize_distributed"]


def _check_address(address: Any) -> str:
    if not isinstance(address, str) or not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", address):
        raise ArgumentError("coordinator", f"expected HOST:PORT (process 0's address), got {address!r}")
    port = int(address.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise ArgumentError("coordinator", f"expected a port in [1, 65535], got {port}")
    return address


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False, heartbeat_timeout: int = 100,
                           initialization_timeout: int = 300) -> bool:
    """Join the processes of a run, before any JAX computation.

    Args:
      coordinator: ``HOST:PORT`` of process 0 (it listens there).
      num_processes: how many processes take part.
      process_id: this process's index in ``[0, num_processes)``.
      auto: let JAX detect the cluster (SLURM, Open MPI, Kubernetes, TPU pod)
        instead of the three arguments above.
      heartbeat_timeout: seconds without a heartbeat after which a process
        counts as dead and the others stop with an error; also how long a
        process that leaves (after an exception) waits for the others at
        shutdown before it, and so they, stop.
      initialization_timeout: seconds to wait for every process to connect.

    Returns:
      True when a multi-process runtime was started; False for one process
      (no arguments, or ``num_processes == 1``).

    Raises:
      ValueError naming the argument (a missing or malformed one; ``auto``
      when no cluster is detected), or RuntimeError from JAX when the
      processes cannot connect.
    """
    if coordinator is not None:
        coordinator = _check_address(coordinator)
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if auto:
        if any(given):
            raise ArgumentError("auto", "detect the cluster from the environment or give coordinator, num_processes and "
                             "process_id, not both")
    elif not any(given):
        return False
    elif not all(given):
        missing = [name for name, g in zip(("coordinator", "num_processes", "process_id"), given) if not g]
        raise ValueError(f"{', '.join(missing)}: required with the others (coordinator, num_processes and "
                         f"process_id go together)")
    heartbeat_timeout = check_int(heartbeat_timeout, "heartbeat_timeout", 1)
    initialization_timeout = check_int(initialization_timeout, "initialization_timeout", 1)
    if not auto:
        num_processes = check_int(num_processes, "num_processes", 1)
        process_id = check_int(process_id, "process_id", 0, num_processes - 1, f" (num_processes = {num_processes})")
        if num_processes == 1:
            return False
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout,
                                   initialization_timeout=initialization_timeout,
                                   shutdown_timeout_seconds=heartbeat_timeout)
    except ValueError as e:  # JAX: "coordinator_address should be defined." when it detects no cluster
        if auto and "defined" in str(e):
            raise ArgumentError("auto", "no cluster was detected (SLURM, Open MPI, Kubernetes, TPU pod) in the "
                             "environment; give coordinator, num_processes and process_id instead") from None
        raise
    return True
