"""Progress of a batch: one event stream, rendered by the CLI as a bar or JSON lines and by
the server as job progress."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ptq4vm_core.batch.manifest import VideoRecord


class EventKind(StrEnum):
    START = "start"  # the plan: every record, frames over all videos
    SKIPPED = "skipped"  # already done by an earlier run (resume)
    STARTED = "started"  # a unit began on an actor
    FRAMES = "frames"  # frames matted
    RETRY = "retry"  # its actor died; the video is queued again
    DONE = "done"
    FAILED = "failed"
    FINISH = "finish"


@dataclass(frozen=True)
class BatchEvent:
    """One thing that happened. `frames_done`/`frames_total`: over the whole batch (videos
    done by an earlier run included); `pid`: the actor process of STARTED and FRAMES."""

    kind: EventKind
    frames_done: int
    frames_total: int
    record: VideoRecord | None = None
    pid: int | None = None
    message: str = ""


class BatchObserver(Protocol):
    def __call__(self, event: BatchEvent, /) -> None: ...


def ignore_events(event: BatchEvent) -> None:
    return None
