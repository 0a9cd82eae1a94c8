"""What every runtime shares: the graph's state inputs and outputs, the intra-op threads a
process gives an engine (`default_threads`, the one place PTQ4VM_THREADS is read) and the
process-wide thread budget that background children take cores from (`BUDGET`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The exported graph's recurrent state inputs and its outputs (model.recipe names the layers).
STATE_INPUTS = ("r1i", "r2i", "r3i", "r4i")
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")


def default_threads() -> int:
    """Intra-op threads: $PTQ4VM_THREADS, else every core the process may use."""
    env = os.environ.get("PTQ4VM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadBudget:
    """The intra-op threads engines of this process may use now: all of theirs, less the cores
    that background work in child processes (a calibration, the default build) holds.

    ONNX Runtime's intra-op threads meet at every operator, so one of them sharing its core
    with another process stalls them all; measured on 2 cores, two threads beside a busy child
    (even one at `SCHED_IDLE`) ran slower than one thread on the free core. `reserve(n)` is
    held while such a child runs, pinned to `n` cores; engines then run sessions with n
    threads fewer (never below one) until it is released.
    """

    def __init__(self) -> None:
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        return self._reserved

    def threads(self, wanted: int) -> int:
        return max(1, wanted - self._reserved)

    @contextmanager
    def reserve(self, cores: int) -> Iterator[None]:
        with self._lock:
            self._reserved += cores
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= cores


BUDGET = ThreadBudget()
