"""Video jobs (`/v1/jobs`): a whole uploaded video matted to alpha, RGBA or a composite.

Jobs run in their own worker threads (never on the event loop); their frames go through the
shared `Scheduler` in its `batch` lane, so a job takes a bounded share of the inference
workers and live sessions keep their frame rate. Results expire `ttl_s` after the job ends.
Jobs live in memory: a restart forgets them (and removes their files once expired).
Uploads are decoded in a child process (server/media/video.py); `cancel` and the per-job time
limit kill that child, so a job stops within a frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import EngineState, Float32Array, compile_shape
from ptq4vm_core.engine.frames import rgb_to_uint8
from ptq4vm_core.io.mattes import MatteWriter
from ptq4vm_core.io.video import parse_background
from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.inference.scheduler import Done, Lane, Scheduler, Work
from server.jobs.job import (
    FINISHED,
    MEDIA_TYPES,
    OUTPUTS,
    Container,
    Job,
    JobCancelledError,
    JobFinishedError,
    JobsFullError,
    JobState,
    OutputKind,
    RemoteMatting,
)
from server.media.sniff import MediaLimits
from server.media.video import VideoSource
from server.metrics import Metrics
from server.models.registry import ModelLease, ModelRegistry

logger = logging.getLogger(__name__)

__all__ = [  # the job's data lives in server.jobs.job; its users import it from here too
    "FINISHED",
    "MEDIA_TYPES",
    "OUTPUTS",
    "Container",
    "Job",
    "JobCancelledError",
    "JobFinishedError",
    "JobManager",
    "JobState",
    "JobsFullError",
    "OutputKind",
    "RemoteMatting",
]


class JobManager:
    def __init__(
        self,
        root: Path,
        *,
        registry: ModelRegistry,
        scheduler: Scheduler,
        metrics: Metrics,
        workers: int = 1,
        max_jobs: int = 16,
        ttl_s: float = 3600.0,
        nice: int = 0,
        limits: MediaLimits | None = None,
        max_job_seconds: float = 3600.0,
        remote: RemoteMatting | None = None,
    ) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._registry = registry
        self._scheduler = scheduler
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ptq4vm-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nice = nice
        self.limits = limits or MediaLimits(4096 * 2048, 600.0, 18_000)
        self.max_job_seconds = max_job_seconds
        self._remote = remote
        # Uploads admitted (server.web.admission) but not yet submitted: they count against
        # max_jobs, so a full server answers 503 before spooling a body.
        self._reserved = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop the scheduler runs on; remove job files left over and expired."""
        self._loop = loop
        self.root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.ttl_s
        for old in self.root.iterdir():
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)

    def new_dir(self) -> tuple[str, Path]:
        """A fresh job id and its directory (for the upload)."""
        job_id = secrets.token_urlsafe(12)
        path = self.root / job_id
        path.mkdir(parents=True)
        return job_id, path

    def _active(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state in (JobState.QUEUED, JobState.RUNNING))

    def try_reserve(self) -> bool:
        """Room for one more upload (queued, running and uploading jobs under max_jobs)?
        True takes a place until `unreserve()`."""
        with self._lock:
            if self._active() + self._reserved >= self.max_jobs:
                return False
            self._reserved += 1
            return True

    def unreserve(self) -> None:
        with self._lock:
            self._reserved -= 1

    def submit(self, job: Job) -> Job:
        with self._lock:
            active = self._active()
            if active >= self.max_jobs:
                raise JobsFullError(f"{active} jobs are queued or running (PTQ4VM_MAX_JOBS)")
            self._jobs[job.id] = job
        self._metrics.jobs_active.inc()
        self._pool.submit(self._execute, job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its decoder is killed, its files removed); None for
        an unknown job, JobFinishedError for one that has finished."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in FINISHED:
                raise JobFinishedError(f"job {job_id} has finished ({job.state.value})")
            job.cancel_requested.set()
            if job.state is JobState.QUEUED:
                self._finish(job, JobState.CANCELLED, "cancelled")
        source = job.source
        if source is not None:
            source.kill()
        logger.info("job %s cancelled", job_id)
        return job

    def _finish(self, job: Job, state: JobState, error: str | None) -> None:
        job.state, job.error = state, error
        job.finished = time.time()
        job.expires = job.finished + self.ttl_s
        shutil.rmtree(job.dir, ignore_errors=True)
        self._metrics.jobs_active.dec()
        self._metrics.jobs.labels(state=state.value).inc()

    def reap(self) -> int:
        now = time.time()
        with self._lock:
            expired = [j for j in self._jobs.values() if j.expires is not None and j.expires < now]
            for job in expired:
                del self._jobs[job.id]
        for job in expired:
            shutil.rmtree(job.dir, ignore_errors=True)
            logger.info("job %s expired; its files are removed", job.id)
        return len(expired)

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.ttl_s / 4))
            await asyncio.to_thread(self.reap)

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._remote is not None:
            self._remote.close()
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            shutil.rmtree(job.dir, ignore_errors=True)

    # In a job thread --------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        with self._lock:
            if job.state is not JobState.QUEUED:  # cancelled while it waited
                return
            job.state = JobState.RUNNING
        if self._nice and hasattr(os, "setpriority"):
            # Linux nice is per thread: decoding and encoding (and the encoder's own threads,
            # which inherit it) yield to live sessions. Inference goes through the scheduler.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        started = time.monotonic()
        timer = threading.Timer(self.max_job_seconds, self._time_out, (job,))
        timer.daemon = True
        timer.start()
        state, error = JobState.DONE, None
        try:
            with self._registry.acquire(job.model) as lease:
                job.version = lease.version
                self._matte(job, lease)
            if job.cancel_requested.is_set():
                raise JobCancelledError("cancelled")
        except Exception as exc:
            state, error = JobState.FAILED, str(exc) or type(exc).__name__
            if job.cancel_requested.is_set():
                state, error = JobState.CANCELLED, "cancelled"
            elif job.timed_out.is_set() or time.monotonic() - started >= self.max_job_seconds:
                error = (
                    f"the job ran over its time limit of {self.max_job_seconds:g} s "
                    "(PTQ4VM_MAX_JOB_SECONDS)"
                )
            logger.info("job %s %s: %s", job.id, state.value, error)
        else:
            logger.info(
                "job %s done: %d frames in %.1f s",
                job.id,
                job.frames_done,
                time.monotonic() - started,
            )
        finally:
            timer.cancel()
            job.source = None
            with self._lock:
                if state is JobState.DONE:
                    job.state = state
                    job.finished = time.time()
                    job.expires = job.finished + self.ttl_s
                    job.input.unlink(missing_ok=True)
                    self._metrics.jobs_active.dec()
                    self._metrics.jobs.labels(state=state.value).inc()
                else:
                    self._finish(job, state, error)

    def _time_out(self, job: Job) -> None:
        # The flag first: a decoder opened after this reads it (`_check_time`) and stops.
        job.timed_out.set()
        source = job.source
        if source is not None:
            logger.info("job %s: over PTQ4VM_MAX_JOB_SECONDS, stopping it", job.id)
            source.kill()

    def _matte(self, job: Job, lease: ModelLease) -> None:
        if self._remote is not None:
            deadline = time.monotonic() + self.max_job_seconds
            self._remote.matte(
                job,
                lease.version,
                lambda: (
                    self._stopping.is_set()
                    or job.cancel_requested.is_set()
                    or time.monotonic() > deadline
                ),
            )
            return
        with VideoSource(job.input, self.limits, nice=self._nice) as source:
            job.source = source
            if job.cancel_requested.is_set():
                raise JobCancelledError("cancelled")
            self._check_time(job)
            self._matte_frames(job, lease, source)

    @staticmethod
    def _check_time(job: Job) -> None:
        if job.timed_out.is_set():
            raise TimeoutError("over PTQ4VM_MAX_JOB_SECONDS")

    def _matte_frames(self, job: Job, lease: ModelLease, source: VideoSource) -> None:
        info = source.meta
        job.frames_total = info.frames
        ratio = resolve_downsample_ratio(job.downsample_ratio, info.width, info.height)
        # Compiled here, in the job's thread, not by the first frame in the shared inference
        # workers, where it would hold up every live session.
        alpha_only = job.output == "alpha"  # what _infer asks for (writer.needs_fgr)
        compile_shape(
            lease.engine, 1, info.height, info.width, ratio, alpha_only=alpha_only, mattes=True
        )
        bg = None
        if job.output == "composite":
            # The image is the job's own upload, already checked (server.media.sniff); a colour
            # otherwise. `background` never names a file: the route accepts colours only.
            spec = str(job.background_image) if job.background_image else job.background
            bg = parse_background(spec, info.width, info.height)
        writer = MatteWriter(
            {job.output: job.result},
            width=info.width,
            height=info.height,
            fps=info.fps,
            background=bg,
            # Only an input with audio is opened here (in this process) for it.
            audio_from=job.input if info.audio else None,
        )
        with writer:
            state: EngineState | None = None
            for frame in source.frames():
                done = self._infer(lease, frame, state, ratio, need_rgb=writer.needs_fgr)
                state = done.state
                fgr, pha = done.payload
                writer.write(pha, fgr)
                job.frames_done += 1
                self._check_time(job)

    def _infer(
        self,
        lease: ModelLease,
        frame: NDArray[np.uint8],
        state: EngineState | None,
        ratio: float,
        need_rgb: bool,
    ) -> Done:
        def finish(
            fgr: Float32Array | None, alpha: NDArray[np.uint8]
        ) -> tuple[NDArray[np.uint8] | None, NDArray[np.uint8]]:
            rgb = rgb_to_uint8(fgr) if need_rgb and fgr is not None else None
            return rgb, alpha

        work = Work(
            engine=lease.engine,
            model=lease.version,
            size=(frame.shape[0], frame.shape[1]),
            ratio=ratio,
            state=state,
            decode=lambda: frame,
            finish=finish,
            lane=Lane.BATCH,
            alpha_only=not need_rgb,
        )
        if self._loop is None:
            raise RuntimeError("JobManager.start() was not called")
        future = asyncio.run_coroutine_threadsafe(self._scheduler.run(work), self._loop)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    future.cancel()
                    raise JobCancelledError("the server shut down during the job") from None
