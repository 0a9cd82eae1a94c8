"""Engines prepared for a new stream shape (OpenVINO compiles one model per shape) in threads of
their own, at lower CPU priority.

A compile takes seconds of CPU. Every client picks its frame size, so a client can ask for one
new shape after another: were those compiles run like any other work, they would take the cores
from the sessions already streaming. Here at most `workers` run at once, in threads at niceness
`nice` (Linux nice is per thread), so streaming frames come first; an engine that already has
the shape answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from ptq4vm_core.engine import Engine
from ptq4vm_core.engine.base import compile_shape


def _lower_priority(nice: int) -> None:
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class ShapeCompiler:
    def __init__(self, *, workers: int = 2, nice: int = 10) -> None:
        self._pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix="ptq4vm-compile",
            initializer=_lower_priority,
            initargs=(nice,),
        )

    async def compile(
        self, engine: Engine, height: int, width: int, ratio: float, *, alpha_only: bool
    ) -> None:
        """`engine` ready for one stream of HxW frames at `ratio` (compiled now if needed),
        fed as the scheduler feeds it (`frames.infer_mattes`); raises what the engine raises
        for a shape it cannot run."""
        call = partial(
            compile_shape, engine, 1, height, width, ratio, alpha_only=alpha_only, mattes=True
        )
        await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
