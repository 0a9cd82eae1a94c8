"""A video job (`/v1/jobs`) as data: what was asked (output, container, model, background),
its state and progress, and how it is described to the client. `server.jobs.manager` runs them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from server.media.video import VideoSource
from server.redact import redact

OutputKind = Literal["alpha", "rgba", "composite"]
Container = Literal["mp4", "webm", "mov"]
# What each output is written as: (writer kind, container choices, the first is the default).
OUTPUTS: dict[str, tuple[Literal["alpha", "rgb", "rgba"], tuple[Container, ...]]] = {
    "alpha": ("alpha", ("mp4", "webm", "mov")),
    "rgba": ("rgba", ("webm", "mov")),
    "composite": ("rgb", ("mp4", "webm", "mov")),
}
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class JobsFullError(Exception):
    """PTQ4VM_MAX_JOBS jobs are queued or running."""


class RemoteMatting(Protocol):
    """Where jobs run instead of this process when a cluster is configured (server.jobs.on_ray):
    `matte` writes `job.result`, keeps `job.frames_done` current and raises
    JobCancelledError once `should_stop()` is true."""

    def matte(self, job: Job, version: str, should_stop: Callable[[], bool]) -> None: ...

    def close(self) -> None: ...


class JobCancelledError(Exception):
    """The server shut down under a running job, or the job was cancelled."""


class JobFinishedError(Exception):
    """A job that has finished cannot be cancelled."""


@dataclass
class Job:
    id: str
    dir: Path
    input: Path
    output: OutputKind
    container: Container
    model: str | None
    downsample_ratio: float | None
    background: str
    # An image uploaded with the job (in its directory), used instead of `background`.
    background_image: Path | None = None
    state: JobState = JobState.QUEUED
    frames_done: int = 0
    frames_total: int | None = None
    version: str | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    expires: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    # Set when the job passes PTQ4VM_MAX_JOB_SECONDS, even before its decoder exists.
    timed_out: threading.Event = field(default_factory=threading.Event, repr=False)
    source: VideoSource | None = field(default=None, repr=False)

    @property
    def result(self) -> Path:
        return self.dir / f"result.{self.container}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.container]

    def describe(self) -> dict[str, Any]:
        progress = None
        if self.state is JobState.DONE:
            progress = 1.0
        elif self.frames_total:
            progress = round(min(1.0, self.frames_done / self.frames_total), 4)
        elif self.state is JobState.QUEUED:
            progress = 0.0
        return {
            "id": self.id,
            "state": self.state.value,
            "progress": progress,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "output": self.output,
            "container": self.container,
            "model": self.version or self.model,
            "error": None if self.error is None else redact(self.error),
            "created": self.created,
            "finished": self.finished,
            "expires": self.expires,
            "result": f"/v1/jobs/{self.id}/result" if self.state is JobState.DONE else None,
        }
