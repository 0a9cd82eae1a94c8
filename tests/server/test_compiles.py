"""Engines compiled for new stream shapes run in threads of their own at lower CPU priority
(`server.inference.compiles`): a client that asks for shape after shape takes no core from the
sessions already streaming."""

from __future__ import annotations

import asyncio
import os
import threading

from ptq4vm_core.engine import EngineKind, load_engine
from ptq4vm_core.engine.base import compile_shape
from server.inference.compiles import ShapeCompiler


def test_shapes_compile_in_lower_priority_threads() -> None:
    engine = load_engine("fp32", EngineKind.OPENVINO)
    compiler = ShapeCompiler(workers=1, nice=7)
    try:
        asyncio.run(compiler.compile(engine, 72, 128, 1.0, alpha_only=True))
        # Compiled there, as the scheduler feeds it (frames in, mattes out): that shape is now
        # ready.
        assert compile_shape(engine, 1, 72, 128, 1.0, alpha_only=True, mattes=True) == 0.0
        threads = [t for t in threading.enumerate() if t.name.startswith("ptq4vm-compile")]
        assert len(threads) == 1
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = os.getpriority(os.PRIO_PROCESS, threads[0].native_id or 0)
        assert theirs == min(19, ours + 7)
    finally:
        compiler.close()
