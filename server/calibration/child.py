"""The one way the server calibrates: a child process (`server.calibration.worker`) that sends
typed events (`server.calibration.protocol`) over its stdout pipe. Admin jobs
(`server.calibration.manager`) and the embedded default build
(`server.calibration.default_build`) both run through `CalibrationChild`.

The child runs at lower CPU priority, on cores of its own beside the sessions
(`server.calibration.cores`), in a process group of its own so that `kill` takes all of it, and with
the lifeline (`server.lifeline`) that ends it with the server. Its log (stderr) goes to a file
beside its spec; the last lines of it explain an exit that sent no `Failure`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from server.calibration.cores import beside_sessions
from server.calibration.protocol import Failure, Progress, Result, WorkerSpec, decode_event

logger = logging.getLogger(__name__)

WORKER_MODULE = "server.calibration.worker"
SPEC_FILE = "spec.json"
LOG_FILE = "worker.log"
_ROOT = Path(__file__).resolve().parent.parent  # where `python -m server...` finds the package


class CalibrationError(Exception):
    """The child failed: it exited without a result, was killed from outside, or broke the
    protocol. The message says how, with the child's own error or its last log lines."""


ProgressHandler = Callable[[Progress], None]


def exit_reason(code: int) -> str:
    """How a child ended, for an error: a negative code is the signal that killed it."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the out-of-memory killer, or an operator)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with {code}"


def follow(lines: Iterable[str], on_progress: ProgressHandler) -> Result | Failure | None:
    """Reads events until the pipe closes: each `Progress` goes to `on_progress`; returns the
    last `Result` or `Failure` (None when the child sent neither). A line that is not an event
    raises CalibrationError."""
    outcome: Result | Failure | None = None
    for line in lines:
        if not line.strip():
            continue
        try:
            event = decode_event(line)
        except ValidationError as exc:
            raise CalibrationError(
                f"the calibration process sent {line[:200].rstrip()!r}, which is not an event: "
                f"{exc.errors(include_url=False)[0]['msg']}"
            ) from None
        if isinstance(event, Progress):
            on_progress(event)
        else:
            outcome = event
    return outcome


class CalibrationChild:
    """One run of the worker on `spec`. `files` is a directory for its spec and log; `threads`
    its intra-op threads (and cores of its own); `nice` how much lower than the server's its
    CPU priority is. `run` blocks until the child ends; `kill` may be called from any thread,
    before or during `run`."""

    def __init__(self, spec: WorkerSpec, files: Path, *, threads: int, nice: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {nice}")
        self.spec = spec
        self.files = files
        self._threads = threads
        self._nice = nice
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._killed = False

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def killed(self) -> bool:
        return self._killed

    def kill(self) -> None:
        """Kills the child's process group (a child not started yet never starts)."""
        with self._lock:
            self._killed = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.killpg(proc.pid, signal.SIGKILL)

    def run(self, on_progress: ProgressHandler) -> Result | None:
        """Runs the child to its end, passing its progress to `on_progress` (on this thread).
        Returns its Result, or None when `kill` stopped it; CalibrationError when it failed."""
        if self._killed:
            return None
        self.files.mkdir(parents=True, exist_ok=True)
        spec_file = self.files / SPEC_FILE
        spec_file.write_text(self.spec.model_dump_json())
        threads = str(self._threads)
        # Fewer threads than cores, on cores of their own (server/calibration/cores.py): spinning
        # OpenMP threads would otherwise take the sessions' cores, whatever the niceness.
        env = {
            **os.environ,
            "PTQ4VM_HOME": str(self.spec.home),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PTQ4VM_THREADS": threads,
        }
        with (self.files / LOG_FILE).open("w+") as log:
            with self._lock:
                if self._killed:
                    return None
                proc = self._proc = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, str(spec_file)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                    cwd=_ROOT,
                    start_new_session=True,  # its own process group: a kill takes it all
                )
            self._lower_priority(proc.pid)
            assert proc.stdout is not None  # stdout=PIPE
            with beside_sessions(proc.pid, self._threads), proc.stdout:
                try:
                    outcome = follow(proc.stdout, on_progress)
                except BaseException:  # a broken protocol, or the handler failed: stop it
                    self.kill()
                    proc.wait()
                    raise
                code = proc.wait()
            if self._killed:
                return None
            if code == 0 and isinstance(outcome, Result):
                return outcome
            if isinstance(outcome, Failure):
                why = outcome.message
            else:
                log.seek(0)
                why = " | ".join(log.read().strip().splitlines()[-3:])
            raise CalibrationError(f"the calibration process {exit_reason(code)}: {why}")

    def _lower_priority(self, pid: int) -> None:
        """Right after the start, before the child has threads (they inherit it)."""
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self._nice)
        try:
            os.setpriority(os.PRIO_PROCESS, pid, target)
        except OSError as exc:  # it has already exited
            logger.warning("could not lower the priority of process %d: %s", pid, exc)
