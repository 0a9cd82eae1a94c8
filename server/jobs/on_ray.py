"""Video jobs on a Ray cluster (`PTQ4VM_RAY_ADDRESS`): `/v1/jobs` keeps its API and states,
and each job's video runs as one unit on a cluster actor instead of the in-process worker.

The actors are `ptq4vm batch`'s (ptq4vm_core.batch.actor): one loaded engine each, kept in a
pool per model version and reused by later jobs. The job directory (upload and result) and
the registry are read and written by the actors, so PTQ4VM_HOME must be on storage every
node mounts at the same path (deploy/ray/). A job whose actor dies is redone from its first
frame on another one; an undecodable video fails the job with the decoder's message;
cancelling it (or the server stopping) kills its actor.

Ray is an optional extra: this module is imported only when PTQ4VM_RAY_ADDRESS is set.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from ptq4vm_core.batch.actor import FramesDone, actor_class
from ptq4vm_core.batch.spec import BatchSpec, VideoTask
from ptq4vm_core.batch.unit import VideoOutcome
from ptq4vm_core.io.video import probe
from server.jobs.manager import Job, JobCancelledError

logger = logging.getLogger(__name__)

# How often a job's thread looks at its cancel flag while its actor works.
POLL_S = 0.25


class RayJobError(Exception):
    """The job's video could not be matted on the cluster."""


class RayJobRunner:
    """Runs `/v1/jobs` videos on Ray actors; one runner per server (thread-safe)."""

    def __init__(
        self, address: str, home: Path, *, cpus_per_actor: float = 1.0, max_attempts: int = 3
    ) -> None:
        self.address = address
        self.max_attempts = max_attempts
        self._actor_class = actor_class(cpus_per_actor, max(1, int(cpus_per_actor)), home)
        self._idle: dict[str, collections.deque[Any]] = collections.defaultdict(collections.deque)
        self._busy: set[Any] = set()
        self._lock = threading.Lock()
        self._connected = False
        self._owned = False  # this runner initialised Ray, so it shuts it down

    def _connect(self) -> None:
        with self._lock:
            if self._connected or ray.is_initialized():
                self._connected = True
                return
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
                self._owned = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayJobError(
                    f"cannot reach the Ray cluster at {self.address} (PTQ4VM_RAY_ADDRESS): {exc}"
                ) from exc
            self._connected = True
            logger.info("video jobs run on the Ray cluster at %s", self.address)

    def _acquire(self, version: str) -> Any:
        with self._lock:
            idle = self._idle[version]
            actor = idle.popleft() if idle else self._actor_class.remote(version, POLL_S)
            self._busy.add(actor)
            return actor

    def _release(self, version: str, actor: Any) -> None:
        with self._lock:
            self._busy.discard(actor)
            self._idle[version].append(actor)

    def _discard(self, actor: Any) -> None:
        with self._lock:
            self._busy.discard(actor)
        ray.kill(actor, no_restart=True)

    def matte(self, job: Job, version: str, should_stop: Callable[[], bool]) -> None:
        """Matte `job.input` into `job.result` with model `version`, updating the job's
        frame counts as the actor reports them.

        Raises:
            JobCancelledError: `should_stop()` became true (cancel, shutdown, time limit).
            RayJobError: the video failed on its actor, or actors kept dying.
        """
        self._connect()
        spec = BatchSpec(
            model=version,
            output=job.output,
            container=job.container,
            background=str(job.background_image) if job.background_image else job.background,
            downsample=job.downsample_ratio,
        )
        task = VideoTask(0, job.input, job.result)
        job.frames_total = probe(job.input).frame_count
        for attempt in range(1, self.max_attempts + 1):
            actor = self._acquire(version)
            try:
                outcome = self._run(job, actor, task, spec, should_stop)
            except RayActorError as exc:
                self._discard(actor)
                logger.warning("job %s: its Ray actor died (attempt %d): %s", job.id, attempt, exc)
                job.frames_done = 0
                continue
            except RayTaskError as exc:
                self._release(version, actor)
                cause = exc.cause if exc.cause is not None else exc
                raise RayJobError(str(cause) or type(cause).__name__) from exc
            except BaseException:
                self._discard(actor)  # cancelled or stopped: the actor may still be matting
                raise
            self._release(version, actor)
            job.frames_done = outcome.frames
            return
        raise RayJobError(f"the Ray actors running this job died {self.max_attempts} times")

    def _run(
        self,
        job: Job,
        actor: Any,
        task: VideoTask,
        spec: BatchSpec,
        should_stop: Callable[[], bool],
    ) -> VideoOutcome:
        stream = actor.matte.options(num_returns="streaming").remote(task, spec)
        while True:
            ready, _ = ray.wait([stream], num_returns=1, timeout=POLL_S)
            if should_stop():
                raise JobCancelledError("cancelled")
            if not ready:
                continue
            try:
                item = ray.get(next(stream))
            except StopIteration:
                raise RayJobError("the Ray actor ended the video without a result") from None
            if isinstance(item, FramesDone):
                job.frames_done = item.frames
            elif isinstance(item, VideoOutcome):
                return item

    def close(self) -> None:
        """Stop every actor of this server (jobs still running fail as cancelled)."""
        with self._lock:
            actors = [a for idle in self._idle.values() for a in idle] + list(self._busy)
            self._idle.clear()
            self._busy.clear()
        if self._connected and ray.is_initialized():
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if self._owned:
                ray.shutdown()
