"""The Ray actor of a batch: one loaded engine, many videos, one at a time.

The engine is loaded once, when the actor starts; each `matte` call is one whole video (the
recurrent state needs its frames in order), streamed back as progress items and a final
outcome (a Ray streaming generator), so the driver sees frames as they are matted and learns
at once when the actor's process dies.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ptq4vm_core.batch.spec import BatchSpec, VideoTask
from ptq4vm_core.batch.unit import VideoOutcome, iter_matte_video
from ptq4vm_core.engine import load_engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorInfo:
    """Where an actor runs and what loading its engine cost."""

    actor_id: str
    node_id: str
    host: str
    pid: int
    engine: str
    load_seconds: float


@dataclass(frozen=True)
class FramesDone:
    """Progress of the video an actor is matting: `frames` written so far."""

    frames: int
    pid: int


class MatteWorker:
    """Holds one engine for `model` (loaded in the constructor: one load per actor)."""

    def __init__(self, model: str, progress_every_s: float = 0.1) -> None:
        started = time.monotonic()
        self._engine = load_engine(model)
        context = ray.get_runtime_context()
        self._progress_every_s = progress_every_s
        self._info = ActorInfo(
            actor_id=context.get_actor_id() or "",
            node_id=context.get_node_id(),
            host=socket.gethostname(),
            pid=os.getpid(),
            engine=self._engine.name,
            load_seconds=time.monotonic() - started,
        )
        logger.info("actor %s loaded %s in %.2f s", self._info.pid, model, self._info.load_seconds)

    def info(self) -> ActorInfo:
        return self._info

    def matte(self, task: VideoTask, spec: BatchSpec) -> Iterator[FramesDone | VideoOutcome]:
        """Yield FramesDone now and then (every frame when progress_every_s is 0), then the
        VideoOutcome. An error (undecodable input) is raised to the driver."""
        steps = iter_matte_video(self._engine, task, spec)
        last = time.monotonic()
        while True:
            try:
                count = next(steps)
            except StopIteration as stop:
                yield stop.value
                return
            now = time.monotonic()
            if now - last >= self._progress_every_s:
                last = now
                yield FramesDone(count, self._info.pid)


def actor_class(cpus: float, threads: int, home: Path | None = None) -> Any:
    """The Ray actor class: `cpus` logical CPUs reserved, the engine on `threads` intra-op
    threads (PTQ4VM_THREADS in the actor's process), models resolved under `home`
    (PTQ4VM_HOME; default: the driver's, when it has one), never restarted by Ray (the
    driver replaces a dead actor and re-runs its video itself)."""
    env = {"PTQ4VM_THREADS": str(threads)}
    home_dir = str(home) if home is not None else os.environ.get("PTQ4VM_HOME")
    if home_dir:
        env["PTQ4VM_HOME"] = home_dir
    return ray.remote(num_cpus=cpus, max_restarts=0, runtime_env={"env_vars": env})(MatteWorker)
