"""`ptq4vm serve` as operators run it, in a subprocess that a test can SIGKILL; and what the
tests read from outside: Prometheus gauges, the children of a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.net import LoopbackUrls, free_port


class ServeProcess(LoopbackUrls):
    """`python -m ptq4vm_core.cli serve` on `home` and a fixed port (so that a restart answers
    where the old process did); the log goes to a file, never to a pipe nobody reads."""

    def __init__(
        self, home: Path, log: Path, *, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.port = port or free_port()
        self.log_path = log
        self.env = {
            **os.environ,
            "PTQ4VM_HOME": str(home),
            "PTQ4VM_BUILD_DEFAULT": "false",
            "PTQ4VM_PORT": str(self.port),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 120) -> ServeProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ptq4vm_core.cli", "serve"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"ptq4vm serve exited:\n{self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.http}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as with the OOM killer or a lost machine."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def gauge(base_url: str, name: str) -> float:
    """A sample of `/metrics` without labels (0 when absent)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0


def wait_for_gauge(base_url: str, name: str, value: float, timeout: float) -> float:
    """Polls `/metrics` until `name` equals `value`; returns the seconds it took."""
    started = time.monotonic()
    while (current := gauge(base_url, name)) != value:
        elapsed = time.monotonic() - started
        assert elapsed < timeout, f"{name} is {current}, not {value}, after {elapsed:.1f} s"
        time.sleep(0.1)
    return time.monotonic() - started


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # The command in `stat` is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
