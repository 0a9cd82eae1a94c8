"""The batch driver: videos spread over Ray actors, faults handled, the manifest kept.

Each video is one ordered unit (see `unit`). Idle actors take the next pending video; a
video whose actor dies (process killed, node lost) goes back to the front of the queue and
is redone from its first frame on another actor (its output is atomic, so nothing of the
killed attempt survives, and the frames come out identical); a replacement actor is started.
A video whose own unit fails (undecodable input) is recorded as failed and the rest go on.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from ptq4vm_core.batch.actor import ActorInfo, FramesDone, actor_class
from ptq4vm_core.batch.events import BatchEvent, BatchObserver, EventKind, ignore_events
from ptq4vm_core.batch.manifest import Manifest, VideoRecord, VideoStatus
from ptq4vm_core.batch.spec import BatchSpec, VideoTask
from ptq4vm_core.batch.unit import VideoOutcome
from ptq4vm_core.engine.loader import FP32, resolve_artifact
from ptq4vm_core.io.video import VideoError, probe

logger = logging.getLogger(__name__)

MiB = 1024 * 1024


class BatchError(Exception):
    """The batch cannot run at all (no actor can load the model, Ray cannot be reached)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a batch runs.

    address: an existing cluster (its GCS `HOST:PORT`, or `auto`); None starts a local
    instance for the run, with `local_cpus` CPUs (default: every core) and a small object
    store (frames never travel through it: actors read and write the shared file system).
    actors: how many (default: the cluster's CPUs / `cpus_per_actor`, at most one a video).
    threads: the engine's intra-op threads in each actor (default: `cpus_per_actor`).
    max_attempts: units started for one video before a dying worker fails it.
    progress_every_s: how often an actor reports frames (0: every frame).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    threads: int | None = None
    max_attempts: int = 3
    progress_every_s: float = 0.1
    local_cpus: int | None = None
    object_store_bytes: int = 200 * MiB

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus per actor must be positive, got {self.cpus_per_actor}")
        if self.max_attempts < 1:
            raise ValueError(f"max attempts must be at least 1, got {self.max_attempts}")

    @property
    def engine_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_actor))


@dataclass
class BatchReport:
    """What a run did: the manifest, the actors it used and where the time went."""

    manifest: Manifest
    wall_seconds: float = 0.0
    ray_seconds: float = 0.0
    actors: list[ActorInfo] = field(default_factory=list)
    actor_deaths: int = 0

    @property
    def ok(self) -> bool:
        return all(r.status is VideoStatus.DONE for r in self.manifest.videos.values())


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text


@dataclass
class _Actor:
    handle: Any
    info_ref: Any  # the pending ObjectRef of info(), None once it arrived
    info: ActorInfo | None = None
    record: VideoRecord | None = None
    stream: Any | None = None


class _Run:
    """The state of one batch run on an initialised Ray."""

    def __init__(
        self,
        manifest: Manifest,
        tasks: dict[str, VideoTask],
        spec: BatchSpec,
        options: RayOptions,
        observer: BatchObserver,
        report: BatchReport,
    ) -> None:
        self.manifest = manifest
        self.tasks = tasks
        self.spec = spec
        self.options = options
        self.observer = observer
        self.report = report
        self.queue: collections.deque[VideoRecord] = collections.deque()
        self.actors: list[_Actor] = []
        self.frames_done = 0
        self.frames_total = 0
        self.actor_class = actor_class(options.cpus_per_actor, options.engine_threads)

    def emit(self, kind: EventKind, record: VideoRecord | None = None, **extra: Any) -> None:
        self.observer(BatchEvent(kind, self.frames_done, self.frames_total, record, **extra))

    def finish_record(self, record: VideoRecord, status: VideoStatus, error: str | None) -> None:
        record.status, record.error = status, error
        self.manifest.save()
        self.emit(EventKind.DONE if status is VideoStatus.DONE else EventKind.FAILED, record)

    def count_frames(self) -> None:
        """Totals for the progress bar; inputs that cannot even be probed fail at once."""
        for record in self.manifest.videos.values():
            if record.status is VideoStatus.DONE:
                self.frames_total += record.frames
                self.frames_done += record.frames
                continue
            try:
                record.frames_total = probe(record.input).frame_count
            except VideoError as exc:
                record.status, record.error = VideoStatus.FAILED, str(exc)
                continue
            self.frames_total += record.frames_total or 0
            self.queue.append(record)
        self.manifest.save()
        self.emit(EventKind.START)
        for record in self.manifest.videos.values():
            if record.status is VideoStatus.DONE:
                self.emit(EventKind.SKIPPED, record)
            elif record.status is VideoStatus.FAILED:
                self.emit(EventKind.FAILED, record)

    def spawn(self) -> None:
        handle = self.actor_class.remote(self.spec.model, self.options.progress_every_s)
        self.actors.append(_Actor(handle, handle.info.remote()))

    def assign(self, actor: _Actor) -> None:
        record = self.queue.popleft()
        record.status, record.error = VideoStatus.RUNNING, None
        record.attempts += 1
        record.frames = 0
        assert actor.info is not None  # only started actors are idle
        record.actor, record.node = actor.info.actor_id, actor.info.host
        record.engine = actor.info.engine
        actor.record = record
        actor.stream = actor.handle.matte.options(
            num_returns="streaming", _generator_backpressure_num_objects=4
        ).remote(self.tasks[record.input], self.spec)
        self.manifest.save()
        self.emit(EventKind.STARTED, record, pid=actor.info.pid)

    def on_info(self, actor: _Actor) -> None:
        try:
            info: ActorInfo = ray.get(actor.info_ref)
        except RayActorError as exc:
            if "creation task" in str(exc):
                # The constructor raised: loading the model fails on every actor alike.
                model = self.spec.model
                raise BatchError(f"a Ray actor could not load model {model!r}: {exc}") from exc
            # Killed while starting (its node lost): start another, within reason.
            self.report.actor_deaths += 1
            self.actors.remove(actor)
            if self.report.actor_deaths > self.options.max_attempts * max(1, len(self.actors)):
                raise BatchError(f"Ray actors keep dying as they start: {exc}") from exc
            self.spawn()
            return
        actor.info, actor.info_ref = info, None
        self.report.actors.append(info)

    def on_stream(self, actor: _Actor) -> None:
        record = actor.record
        assert record is not None
        assert actor.stream is not None
        try:
            item = ray.get(next(actor.stream))
        except StopIteration:
            item = RuntimeError("the actor ended the video without an outcome")
        except RayActorError as exc:
            self.on_death(actor, exc)
            return
        except RayTaskError as exc:
            item = exc
        if isinstance(item, FramesDone):
            self.frames_done += item.frames - record.frames
            record.frames = item.frames
            self.emit(EventKind.FRAMES, record, pid=item.pid)
            return
        actor.record, actor.stream = None, None
        if isinstance(item, VideoOutcome):
            self.frames_done += item.frames - record.frames
            if record.frames_total is None:
                self.frames_total += item.frames
            record.frames, record.frames_total = item.frames, item.frames
            record.seconds, record.fps = round(item.seconds, 4), round(item.fps, 3)
            record.downsample_ratio = item.downsample_ratio
            self.finish_record(record, VideoStatus.DONE, None)
        else:
            self.frames_done -= record.frames
            self.finish_record(record, VideoStatus.FAILED, _error_text(item))

    def on_death(self, actor: _Actor, exc: BaseException) -> None:
        self.report.actor_deaths += 1
        self.actors.remove(actor)
        ray.kill(actor.handle, no_restart=True)
        record = actor.record
        assert record is not None
        self.frames_done -= record.frames
        record.frames = 0
        reason = f"worker died on attempt {record.attempts}: {_error_text(exc)}"
        logger.warning("%s: %s", record.input, reason)
        if record.attempts >= self.options.max_attempts:
            self.finish_record(record, VideoStatus.FAILED, reason)
        else:
            record.status = VideoStatus.PENDING
            self.queue.appendleft(record)
            self.manifest.save()
            self.emit(EventKind.RETRY, record, message=reason)
        self.spawn()

    def loop(self, actors: int) -> None:
        for _ in range(actors):
            self.spawn()
        while self.queue or any(a.record is not None for a in self.actors):
            for actor in self.actors:
                if actor.info is not None and actor.record is None and self.queue:
                    self.assign(actor)
            waiting = {}
            for actor in self.actors:
                if actor.info_ref is not None:
                    waiting[actor.info_ref] = actor
                elif actor.stream is not None:
                    waiting[actor.stream] = actor
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
            for key in ready:
                actor = waiting[key]
                if actor.info_ref is not None:
                    self.on_info(actor)
                else:
                    self.on_stream(actor)

    def interrupted(self) -> None:
        """Leave running videos pending (a re-run does them) and stop the actors."""
        for actor in self.actors:
            if actor.record is not None and actor.record.status is VideoStatus.RUNNING:
                actor.record.status = VideoStatus.PENDING
            ray.kill(actor.handle, no_restart=True)
        self.actors.clear()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _connect(options: RayOptions) -> bool:
    """Initialise Ray for the run; True when this call did (and must shut it down)."""
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if options.address is None:
            # "local", not None: a RAY_ADDRESS in the environment must not redirect the run.
            ray.init(
                address="local",
                num_cpus=options.local_cpus or _cores(),
                object_store_memory=options.object_store_bytes,
                include_dashboard=False,
                **common,
            )
        else:
            ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local instance"
        raise BatchError(f"cannot start or reach Ray at {where}: {exc}") from exc
    return True


def check_model(model: str) -> None:
    """Fail in the driver, before any actor starts, when MODEL names nothing here.

    Raises:
        ModelNotFoundError: not `fp32`, a registry version or an artifact directory.
    """
    if model != FP32:
        resolve_artifact(model)


def run_batch(
    tasks: Sequence[VideoTask],
    spec: BatchSpec,
    out_dir: Path,
    options: RayOptions | None = None,
    observer: BatchObserver = ignore_events,
) -> BatchReport:
    """Matte every task on Ray and keep `out_dir/batch.json` up to date; videos already done
    under the same settings (an earlier run) are skipped. Returns the report whatever the
    videos' fates; a run cut short (Ctrl-C) leaves its unfinished videos pending.

    Raises:
        BatchError: Ray cannot be started or reached, or no actor can load the model.
        ModelNotFoundError: `spec.model` names nothing.
    """
    options = options or RayOptions()
    started = time.monotonic()
    check_model(spec.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.for_batch(out_dir, spec, list(tasks))
    report = BatchReport(manifest)
    run = _Run(manifest, {str(t.input): t for t in tasks}, spec, options, observer, report)
    run.count_frames()
    if run.queue:
        connect_started = time.monotonic()
        owned = _connect(options)
        report.ray_seconds = time.monotonic() - connect_started
        try:
            resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
            cpus = float(resources.get("CPU", 1.0))
            wanted = options.actors or max(1, int(cpus // options.cpus_per_actor))
            run.loop(min(wanted, len(run.queue)))
        finally:
            run.interrupted()
            manifest.finished = time.time()
            manifest.save()
            if owned:
                ray.shutdown()
    else:
        manifest.finished = time.time()
        manifest.save()
    report.wall_seconds = time.monotonic() - started
    run.emit(EventKind.FINISH)
    return report
