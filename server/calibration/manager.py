"""Admin recalibration jobs (DESIGN 4.4): a queue run one at a time, each job a calibration child
(`server.calibration.child`) at lower CPU priority; records kept in SQLite.

Layout under the cache root: `calibrations/calibrations.sqlite3` (one row per job, its record
as JSON), `calibrations/<id>/` (the uploaded clips under generated names, the worker's spec,
log and prepared frames; removed when the job ends) and the staging artifact
`models/.calibration-<id>` (inside the registry, so registering it is one rename; removed
whatever happens to the job). A job that was queued or running when the server died is
marked failed ("interrupted") at the next start, and its files are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ptq4vm_core.artifact import update_metrics
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.quant.spec import Bits, Int8Target
from server.calibration.child import CalibrationChild
from server.calibration.protocol import (
    CalibrationOptions,
    ClipSpec,
    GateSpec,
    Progress,
    Result,
    WorkerSpec,
    worker_options,
)
from server.calibration.speed import speed_spec
from server.models.registry import ModelRegistry
from server.settings import Settings

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".calibration-"
DB_FILE = "calibrations.sqlite3"
PERSIST_INTERVAL_S = 1.0  # progress is written to SQLite at most this often


class CalibrationState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({CalibrationState.DONE, CalibrationState.FAILED, CalibrationState.CANCELLED})


class InsufficientStorageError(Exception):
    """Less free disk space under the cache root than PTQ4VM_MIN_FREE_BYTES."""


class NotCancellableError(Exception):
    """The job has already finished."""


@dataclass
class Calibration:
    """One job's record: what was asked, where it is (stage, progress in [0, 1], ETA in s,
    latest loss), and how it ended (version, gate report in `metrics`, error)."""

    id: str
    bits: Bits
    method: Method
    profile: Profile
    activate: bool
    clips: list[dict[str, Any]]
    int8_target: Int8Target = Int8Target.VNNI
    options: dict[str, Any] = field(default_factory=dict)  # `CalibrationOptions`, as given
    state: CalibrationState = CalibrationState.QUEUED
    stage: str | None = None
    progress: float = 0.0
    eta_s: float | None = None
    loss: float | None = None
    version: str | None = None
    activated: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("state", "bits", "method", "profile", "int8_target"):
            data[key] = data[key].value
        return data

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        data["state"] = CalibrationState(data["state"])
        data["bits"], data["method"] = Bits(data["bits"]), Method(data["method"])
        data["profile"] = Profile(data["profile"])
        # A record written before int8 targets existed was calibrated for VNNI.
        data["int8_target"] = Int8Target(data.get("int8_target", Int8Target.VNNI))
        data.setdefault("options", {})  # a record written before the options existed
        return cls(**data)


class CalibrationStore:
    """The job records in one SQLite file; every method is thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calibrations "
            "(id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)"
        )

    def save(self, job: Calibration) -> None:
        record = json.dumps(job.describe())
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calibrations (id, created, record) VALUES (?, ?, ?)",
                (job.id, job.created, record),
            )

    def load(self) -> list[Calibration]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM calibrations ORDER BY created").fetchall()
        return [Calibration.from_json(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CalibrationManager:
    """Queues jobs and runs them one at a time on its thread; see the module docstring."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self.root = settings.calibrations_dir
        self._store = CalibrationStore(self.root / DB_FILE)
        self._jobs: dict[str, Calibration] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._child: CalibrationChild | None = None
        self._cancelling: set[str] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="ptq4vm-calibrations", daemon=True)

    # Lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Loads the records, marks jobs a dead server left unfinished as failed, removes
        their files, and starts the thread."""
        for job in self._store.load():
            if job.state not in FINISHED:
                job.state = CalibrationState.FAILED
                job.error = "interrupted: the server stopped before the job finished"
                job.finished = time.time()
                self._store.save(job)
                logger.warning("calibration %s was interrupted by a server stop", job.id)
            self._jobs[job.id] = job
        for stale in self._settings.models_dir.glob(f"*{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for child in self.root.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        self._thread.start()

    def close(self) -> None:
        """Kills a running job (it ends failed, interrupted) and stops the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._kill()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self._store.close()

    # Requests --------------------------------------------------------------------------------

    def check_disk(self) -> None:
        self._settings.home.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self._settings.home).free
        if free < self._settings.min_free_bytes:
            raise InsufficientStorageError(
                f"only {free} bytes free under {self._settings.home}; a calibration needs "
                f"{self._settings.min_free_bytes} (PTQ4VM_MIN_FREE_BYTES)"
            )

    def new_dir(self) -> tuple[str, Path]:
        """A new job id and its directory for the uploads."""
        job_id = uuid.uuid4().hex
        path = self.root / job_id
        path.mkdir(parents=True)
        return job_id, path

    def submit(self, job: Calibration) -> None:
        with self._cond:
            self._jobs[job.id] = job
            self._store.save(job)
            self._queue.append(job.id)
            self._cond.notify_all()
        logger.info("calibration %s queued (%s %s %s)", job.id, job.method, job.bits, job.profile)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            job = self._jobs.get(job_id)
            return None if job is None else job.describe()

    def list(self) -> list[dict[str, Any]]:
        with self._cond:
            return [job.describe() for job in self._jobs.values()]

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancels a queued or running job (None for an unknown id); NotCancellableError for
        a finished one. A running job's child is killed; its thread then cleans up."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in FINISHED:
                raise NotCancellableError(f"calibration {job_id} has already {job.state.value}")
            if job.stage == "register":
                raise NotCancellableError(f"calibration {job_id} is registering its version")
            self._cancelling.add(job_id)
            if job.state is CalibrationState.QUEUED:
                self._queue.remove(job_id)
                self._finish(job, CalibrationState.CANCELLED, "cancelled by an admin")
                shutil.rmtree(self.root / job_id, ignore_errors=True)
                return job.describe()
        self._kill()
        with self._cond:
            return job.describe()

    @property
    def child_pid(self) -> int | None:
        """The running job's calibration process, while it runs."""
        with self._cond:
            child = self._child
        return None if child is None else child.pid

    def _kill(self) -> None:
        with self._cond:
            child = self._child
        if child is not None:
            child.kill()

    # The job thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._jobs[self._queue.popleft()]
                job.state, job.started, job.stage = CalibrationState.RUNNING, time.time(), "start"
                self._store.save(job)
            try:
                self._run(job)
            except Exception as exc:  # the job fails; the thread and the server go on
                logger.exception("calibration %s failed", job.id)
                self._end(job, exc)
            else:
                self._end(job, None)
            finally:
                shutil.rmtree(self._staging(job), ignore_errors=True)
                shutil.rmtree(self.root / job.id, ignore_errors=True)

    def _end(self, job: Calibration, exc: Exception | None) -> None:
        with self._cond:
            if job.id in self._cancelling:
                self._cancelling.discard(job.id)
                self._finish(job, CalibrationState.CANCELLED, "cancelled by an admin")
            elif self._closing:
                self._finish(job, CalibrationState.FAILED, "interrupted: the server stopped")
            elif exc is not None:
                self._finish(job, CalibrationState.FAILED, str(exc) or type(exc).__name__)
            else:
                self._finish(job, CalibrationState.DONE, job.error)

    def _finish(self, job: Calibration, state: CalibrationState, error: str | None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        if state is CalibrationState.DONE:
            job.progress, job.eta_s = 1.0, 0.0
        self._store.save(job)
        logger.info("calibration %s %s%s", job.id, state.value, f": {error}" if error else "")

    def _staging(self, job: Calibration) -> Path:
        return self._settings.models_dir / f"{STAGING_PREFIX}{job.id}"

    def _spec(self, job: Calibration) -> WorkerSpec:
        s, work = self._settings, self.root / job.id
        active = self._registry.active()
        active_path = self._registry.path_of(active)
        return WorkerSpec(
            clips=[
                ClipSpec(video=work / c["file"], alpha=work / c["alpha"] if c["alpha"] else None)
                for c in job.clips
            ],
            bits=job.bits,
            method=job.method,
            profile=job.profile,
            out=self._staging(job),
            work=work / "frames",
            home=s.home,
            gate=GateSpec(
                active_version=active,
                active=active_path,
                holdout=s.gate_holdout,
                max_mad=s.gate_max_mad,
                margin=s.gate_margin,
            ),
            parent=os.getpid(),
            int8_target=job.int8_target,
            **worker_options(CalibrationOptions.model_validate(job.options)),
            # Timed against the active model only where the job may replace it.
            speed=speed_spec(s, active, active_path) if job.activate and s.speed_check else None,
        )

    def _run(self, job: Calibration) -> None:
        self.check_disk()
        s = self._settings
        s.models_dir.mkdir(parents=True, exist_ok=True)
        with self._cond:
            if job.id in self._cancelling or self._closing:
                return
            child = self._child = CalibrationChild(
                self._spec(job),
                self.root / job.id,
                threads=s.calibration_build_threads,
                nice=s.calibration_nice,
            )
        saved = 0.0

        def progress(event: Progress) -> None:
            nonlocal saved
            with self._cond:
                job.stage, job.progress, job.eta_s = event.stage, event.fraction, event.eta_s
                if event.loss is not None:
                    job.loss = event.loss
                if time.monotonic() - saved > PERSIST_INTERVAL_S:
                    saved = time.monotonic()
                    self._store.save(job)

        try:
            result = child.run(progress)
        finally:
            with self._cond:
                self._child = None
        if result is None or job.id in self._cancelling or self._closing:
            return
        self._register(job, result)

    def _register(self, job: Calibration, result: Result) -> None:
        if result.gate is None:
            raise RuntimeError("the calibration process sent no quality gate report")
        with self._cond:
            if job.id in self._cancelling or self._closing:
                return
            job.stage, job.metrics = "register", result.gate.to_dict()
        uploads = [{k: c[k] for k in ("name", "sha256", "bytes")} for c in job.clips]
        update_metrics(self._staging(job), {"uploads": uploads})
        version = self._registry.register(self._staging(job))
        passed = result.gate.passed
        with self._cond:
            job.version = version
        speed = result.speed
        if speed is not None:
            with self._cond:
                job.metrics["speed"] = speed.model_dump(mode="json")
        if job.activate and passed and (speed is None or speed.faster):
            self._registry.activate(version)
            with self._cond:
                job.activated = True
        elif job.activate and passed and speed is not None:
            with self._cond:
                job.error = (
                    f"not activated: not faster here than {speed.incumbent_version} "
                    f"({speed.describe()}); POST /admin/models/{version}/activate overrides"
                )
            logger.warning("calibration %s: %s", job.id, job.error)
        elif job.activate:
            with self._cond:
                job.error = "not activated: the quality gate failed; see metrics"
