"""The embedded default (DESIGN 4.4): serve FP32 at once; with an empty registry, build the
W8A8 PTQ4VM model on the sample clip in the background, then register and activate it.

The build is `ptq4vm calibrate` in a child process at lower CPU priority (`os.nice`), so it
neither blocks the event loop nor holds the GIL that streaming needs; a thread waits for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Any

from ptq4vm_core.assets import sample_clip_path
from server.background import beside_sessions
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.settings import Settings

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".default-build-"
# `python -c` runs the CLI at the niceness given as its first argument, with the lifeline of
# calibration children (server/lifeline.py): it exits, removing its staging directory (the
# third argument), once the server (the second) is gone, even after a SIGKILL.
_LAUNCHER = (
    "import os, sys; os.nice(int(sys.argv.pop(1))); "
    "from pathlib import Path; from server.lifeline import exit_with_parent; "
    "exit_with_parent(int(sys.argv.pop(1)), Path(sys.argv.pop(1))); sys.argv[0] = 'ptq4vm'; "
    "from ptq4vm_core.cli.main import main; main()"
)


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
        self._tail: deque[str] = deque(maxlen=20)
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._set(BuildState.OFF)

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "method": self._settings.default_method.value,
            "profile": self._settings.default_profile.value,
            "version": self.version,
            "error": self.error,
            "seconds": self.seconds,
        }

    def maybe_start(self) -> bool:
        """Start the build when it is wanted: switched on, no --model, an empty registry."""
        root = self._registry.root
        if root.is_dir():
            for stale in root.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
        s = self._settings
        if not s.build_default or s.model is not None or self._registry.version_names():
            return False
        self._thread = threading.Thread(target=self._run, name="ptq4vm-default-build", daemon=True)
        self._set(BuildState.RUNNING)
        self.started = time.monotonic()
        self._thread.start()
        return True

    def stop(self) -> None:
        """Kill a running build (the server is shutting down) and wait for the thread."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait(self, timeout: float | None = None) -> BuildState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _set(self, state: BuildState) -> None:
        self.state = state
        self._metrics.set_default_build(state.value)

    def _command(self, out: Path) -> list[str]:
        s = self._settings
        return [
            sys.executable,
            "-c",
            _LAUNCHER,
            str(s.default_nice),
            str(os.getpid()),
            str(out),
            "calibrate",
            "--clips",
            str(sample_clip_path(s.home)),
            "--bits",
            "w8a8",
            "--method",
            s.default_method.value,
            "--profile",
            s.default_profile.value,
            "--out",
            str(out),
        ]

    def _run(self) -> None:
        s = self._settings
        out = s.models_dir / f"{STAGING_PREFIX}{os.getpid()}-{int(time.time())}"
        logger.info(
            "no quantized model in %s: serving fp32 now and building the default W8A8 model "
            "(%s, %s profile) on the sample clip in the background",
            s.models_dir,
            s.default_method.value,
            s.default_profile.value,
        )
        try:
            s.models_dir.mkdir(parents=True, exist_ok=True)
            command = self._command(out)
            threads = str(s.build_threads)
            # Fewer threads than cores, on cores of its own (server/background.py): the build's
            # spinning OpenMP threads would otherwise take the sessions' cores, whatever its
            # niceness.
            env = {
                **os.environ,
                "PTQ4VM_HOME": str(s.home),
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "PTQ4VM_THREADS": threads,
            }
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
            assert self._proc.stdout is not None
            with beside_sessions(self._proc.pid, s.build_threads), self._proc.stdout:
                for line in self._proc.stdout:
                    if line.strip():
                        self._tail.append(line.rstrip())
                        logger.debug("default build: %s", line.rstrip())
                code = self._proc.wait()
            if self._stopping.is_set():
                raise RuntimeError("stopped: the server shut down")
            if code != 0:
                raise RuntimeError(
                    f"`ptq4vm calibrate` exited with {code}: " + " | ".join(list(self._tail)[-5:])
                )
            self.version = self._registry.register(out, activate=True)
        except Exception as exc:  # AssetError, ArtifactError, OSError ...: all end the build
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
            self.seconds = time.monotonic() - (self.started or time.monotonic())
            self._set(BuildState.DONE)
            logger.info(
                "default model %s built in %.0f s and activated; new sessions use it",
                self.version,
                self.seconds,
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
