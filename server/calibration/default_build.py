"""The embedded default (DESIGN 4.4): serve FP32 at once; with an empty registry, build the
W8A8 model for this CPU's class (PTQ4VM on the sample clip, by default; the saturation-safe
`avx2` int8 target where the CPU has no VNNI) in the background, register it, and activate it
only if it is faster here than the model it would replace (`server.calibration.speed`: both
timed by the build's child on this CPU's engines); the log and `describe()` say which and
the two figures.

The build is a calibration child (`server.calibration.child`, as admin jobs are) at lower CPU
priority, so it neither blocks the event loop nor holds the GIL that streaming needs; a thread
waits for it. Its stage and progress are in `describe()` (`GET /readyz`, `GET /v1/models`) and
in the log: a line per stage and per tenth of the work.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from enum import StrEnum
from typing import Any

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.engine import FP32
from ptq4vm_core.engine.cpu import default_int8_target
from ptq4vm_core.quant.spec import Bits
from server.calibration.child import CalibrationChild
from server.calibration.protocol import ClipSpec, Progress, WorkerSpec
from server.calibration.speed import SpeedReport, speed_spec
from server.metrics import Metrics
from server.models.registry import ModelRegistry
from server.settings import Settings

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".default-build-"
FILES_DIR = "default-build"  # under the cache root: the child's spec and log
LOG_STEPS = 10  # progress lines in the log per build


class BuildState(StrEnum):
    OFF = "off"  # not needed (the registry has versions, a model was given) or switched off
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DefaultModelBuilder:
    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self.state = BuildState.OFF
        self.version: str | None = None
        self.error: str | None = None
        self.started: float | None = None
        self.seconds: float | None = None
        self.stage: str | None = None
        self.progress: float | None = None
        self.eta_s: float | None = None
        self.target = default_int8_target()
        self.speed: SpeedReport | None = None
        self.activated: bool | None = None
        self.decision: str | None = None
        self._logged: tuple[str | None, int] = (None, -1)  # (stage, tenth) last logged
        self._lock = threading.Lock()
        self._child: CalibrationChild | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._set(BuildState.OFF)

    def describe(self) -> dict[str, Any]:
        """The build's record; `stage`, `progress` (in [0, 1]) and `eta_s` are null until the
        build runs, `progress` is 1 once it is done; `speed` (both models' fps, their ratio),
        `activated` and `decision` once it is done."""
        with self._lock:
            return {
                "state": self.state.value,
                "method": self._settings.default_method.value,
                "profile": self._settings.default_profile.value,
                "int8_target": self.target.value,
                "version": self.version,
                "activated": self.activated,
                "decision": self.decision,
                "speed": None if self.speed is None else self.speed.model_dump(mode="json"),
                "error": self.error,
                "seconds": self.seconds,
                "stage": self.stage,
                "progress": self.progress,
                "eta_s": self.eta_s,
            }

    @property
    def child_pid(self) -> int | None:
        """The build's calibration process, while it runs."""
        child = self._child
        return None if child is None else child.pid

    def maybe_start(self) -> bool:
        """Start the build when it is wanted: switched on, no --model, an empty registry."""
        s, root = self._settings, self._registry.root
        if root.is_dir():
            for stale in root.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
        files = s.home / FILES_DIR  # a SIGKILLed server's is stale
        shutil.rmtree(files, ignore_errors=True)
        if not s.build_default or s.model is not None or self._registry.version_names():
            return False
        out = s.models_dir / f"{STAGING_PREFIX}{os.getpid()}-{int(time.time())}"
        spec = WorkerSpec(
            clips=[ClipSpec(video=sample_clip_path(s.home))],
            bits=Bits.W8A8,
            method=s.default_method,
            profile=s.default_profile,
            out=out,
            work=files / "frames",
            home=s.home,
            gate=None,  # the first quantized model: nothing to judge it against but fp32
            parent=os.getpid(),
            int8_target=self.target,
            speed=speed_spec(s, FP32, FP32) if s.speed_check else None,
        )
        self._child = CalibrationChild(spec, files, threads=s.build_threads, nice=s.default_nice)
        self._thread = threading.Thread(target=self._run, name="ptq4vm-default-build", daemon=True)
        self._set(BuildState.RUNNING)
        self.started = time.monotonic()
        self._thread.start()
        return True

    def stop(self) -> None:
        """Kill a running build (the server is shutting down) and wait for the thread."""
        self._stopping.set()
        if self._child is not None:
            self._child.kill()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait(self, timeout: float | None = None) -> BuildState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _set(self, state: BuildState) -> None:
        self.state = state
        self._metrics.set_default_build(state.value)

    def _progress(self, event: Progress) -> None:
        with self._lock:
            self.stage, self.progress, self.eta_s = event.stage, event.fraction, event.eta_s
        tenth = int(event.fraction * LOG_STEPS)
        stage, logged = self._logged
        if event.stage == stage and tenth <= logged:
            return
        self._logged = (event.stage, tenth)
        eta = "" if event.eta_s is None else f", about {event.eta_s:.0f} s left"
        logger.info("default build: %s, %.0f%% done%s", event.stage, 100 * event.fraction, eta)

    def _decide(self, speed: SpeedReport | None) -> None:
        """Activates the built version only where it is faster than the one served."""
        version = self.version
        if version is None:
            raise RuntimeError("the default build decides only after registering its version")
        if speed is None:  # PTQ4VM_SPEED_CHECK off
            self._registry.activate(version)
            with self._lock:
                self.activated, self.decision = True, "activated (the speed check is off)"
            return
        incumbent = speed.incumbent_version
        if speed.faster:
            self._registry.activate(version)
            decision = f"activated: faster than {incumbent} here ({speed.describe()})"
        else:
            decision = (
                f"not activated, still serving {incumbent}: the built model is not faster here "
                f"({speed.describe()}); activate it by hand if you want it"
            )
        with self._lock:
            self.speed, self.activated, self.decision = speed, speed.faster, decision

    def _run(self) -> None:
        s, child = self._settings, self._child
        if child is None:
            raise RuntimeError("the default build's thread runs only after maybe_start")
        logger.info(
            "no quantized model in %s: serving fp32 now and building the default W8A8 model "
            "(%s, %s profile, int8 target %s for this CPU) on the sample clip in the background",
            s.models_dir,
            s.default_method.value,
            s.default_profile.value,
            self.target.value,
        )
        out = child.spec.out
        try:
            s.models_dir.mkdir(parents=True, exist_ok=True)
            result = child.run(self._progress)
            if result is None or self._stopping.is_set():
                raise RuntimeError("stopped: the server shut down")
            self.version = self._registry.register(out)
            self._decide(result.speed)
        except Exception as exc:  # CalibrationError, AssetError, ArtifactError, OSError ...
            with self._lock:
                self.error = str(exc)
                self.seconds = time.monotonic() - (self.started or time.monotonic())
            self._set(BuildState.FAILED)
            log = logger.info if self._stopping.is_set() else logger.error
            log(
                "default model build failed; still serving %s: %s",
                self._registry.active(),
                self.error,
            )
        else:
            with self._lock:
                self.seconds = time.monotonic() - (self.started or time.monotonic())
                self.stage, self.progress, self.eta_s = "done", 1.0, 0.0
            self._set(BuildState.DONE)
            logger.info(
                "default model %s built in %.0f s; %s", self.version, self.seconds, self.decision
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(child.files, ignore_errors=True)
