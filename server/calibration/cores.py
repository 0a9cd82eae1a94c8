"""Child processes that calibrate beside live sessions (admin jobs, the default build).

A child is pinned to the last cores of the machine, as many as it has threads, and while it
runs the engines of this process use that many intra-op threads fewer (`ThreadBudget`): ONNX
Runtime's threads wait for each other at every operator, so sharing a core with a busy child
costs the sessions far more than one thread less does, whatever the child's niceness.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ptq4vm_core.engine.runtime import BUDGET

logger = logging.getLogger(__name__)


def background_cores(threads: int) -> set[int] | None:
    """The cores for a child with `threads` threads: the last ones this process may use, or
    None where that would leave the engines no core of their own."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if threads >= len(cores):
        return None
    return set(cores[-threads:])


@contextmanager
def beside_sessions(pid: int, threads: int) -> Iterator[None]:
    """Pins child `pid` to its own cores and keeps them from the engines until the block ends."""
    cores = background_cores(threads)
    if cores is None:
        yield
        return
    try:
        os.sched_setaffinity(pid, cores)
    except OSError as exc:  # it has already exited, or pinning is not permitted here
        logger.warning("could not pin process %d to cores %s: %s", pid, sorted(cores), exc)
        yield
        return
    with BUDGET.reserve(len(cores)):
        yield
