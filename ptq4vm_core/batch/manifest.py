"""`DIR/batch.json`: each video's status, frames, speed and error; what a re-run resumes from.

Only the driver writes it, always whole and atomically (a temporary file renamed over it), so
a reader or a re-run after a crash sees either the previous or the new version.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ptq4vm_core.batch.spec import MANIFEST_NAME, BatchSpec, VideoTask
from ptq4vm_core.io.video import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

FORMAT = 1


class VideoStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def input_stamp(path: Path) -> dict[str, int] | None:
    """Size and modification time of an input (for a frame directory: of its frames), so a
    re-run redoes a video whose input changed; None when it cannot be read."""
    try:
        if path.is_dir():
            frames = [
                p.stat()
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            ]
            return {
                "files": len(frames),
                "size": sum(s.st_size for s in frames),
                "mtime_ns": max((s.st_mtime_ns for s in frames), default=0),
            }
        stat = path.stat()
        return {"files": 1, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return None


@dataclass
class VideoRecord:
    """One video of the batch. `fps` is matting throughput (frames / `seconds` of its
    successful unit); `attempts` counts units started (more than one after a worker died)."""

    input: str
    output: str
    status: VideoStatus = VideoStatus.PENDING
    frames: int = 0
    frames_total: int | None = None
    fps: float | None = None
    seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    actor: str | None = None
    node: str | None = None
    engine: str | None = None
    downsample_ratio: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stamp: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = VideoStatus(known.get("status", "pending"))
        return cls(**known)

    def is_complete(self, settings: dict[str, Any], stamp: dict[str, int] | None) -> bool:
        """Done under these settings, from this very input, and its output still there."""
        return (
            self.status is VideoStatus.DONE
            and self.settings == settings
            and stamp is not None
            and self.stamp == stamp
            and Path(self.output).exists()
        )


@dataclass
class Manifest:
    path: Path
    settings: dict[str, Any]
    videos: dict[str, VideoRecord] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @classmethod
    def for_batch(cls, out_dir: Path, spec: BatchSpec, tasks: list[VideoTask]) -> Manifest:
        """The manifest of this batch: records of earlier runs kept (those still complete
        are skipped), one fresh pending record for every other task."""
        path = out_dir / MANIFEST_NAME
        previous = cls.load(path)
        settings = spec.identity()
        manifest = cls(path, settings)
        for task in tasks:
            key = str(task.input)
            stamp = input_stamp(task.input)
            old = previous.videos.get(key) if previous else None
            complete = old is not None and old.output == str(task.output)
            if old is not None and complete and old.is_complete(settings, stamp):
                manifest.videos[key] = old
                continue
            manifest.videos[key] = VideoRecord(
                input=key, output=str(task.output), settings=settings, stamp=stamp
            )
        return manifest

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        """The manifest at `path`, or None when there is none (or it cannot be parsed, which
        only means nothing is resumed)."""
        try:
            data = json.loads(path.read_text())
            videos = {v["input"]: VideoRecord.from_json(v) for v in data["videos"]}
            return cls(path, data.get("settings", {}), videos, data.get("started", 0.0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s (nothing is resumed): %s", path, exc)
            return None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in VideoStatus), 0)
        for record in self.videos.values():
            counts[record.status.value] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "settings": self.settings,
            "started": self.started,
            "finished": self.finished,
            "counts": self.counts(),
            "videos": [r.to_json() for r in self.videos.values()],
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(temporary, self.path)
