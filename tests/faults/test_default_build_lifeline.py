"""The embedded default build's child and a SIGKILLed server (issue 18): the child has the
lifeline of calibration children (server/lifeline.py), so it exits with its server, removing
its staging directory, instead of computing a version nobody will register; a restart on the
same home starts one build, never a second one beside an orphan."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from server.calibration.child import SPEC_FILE, WORKER_MODULE
from server.calibration.default_build import FILES_DIR, STAGING_PREFIX
from tests.faults.serve import ServeProcess, alive, children
from tests.server.conftest import Assets, make_home

# A build that cannot finish while the test looks at it, on one thread.
ENV = {
    "PTQ4VM_BUILD_DEFAULT": "true",
    "PTQ4VM_DEFAULT_METHOD": "ptq4vm",
    "PTQ4VM_DEFAULT_PROFILE": "standard",
    "PTQ4VM_DEFAULT_THREADS": "1",
}


def is_default_build(cmd: str, home: Path | None = None) -> bool:
    """Whether `cmd` is a calibration child on a default build's spec (for `home`)."""
    spec = f"{FILES_DIR}/{SPEC_FILE}" if home is None else str(home / FILES_DIR / SPEC_FILE)
    return WORKER_MODULE in cmd and spec in cmd


def build_children(pid: int, timeout: float = 60) -> list[int]:
    """The default-build children of `pid` (`python -m server.calibration.worker
    HOME/default-build/spec.json`), once one runs."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p, cmd in children(pid) if is_default_build(cmd)]
        if found:
            return found
        assert time.monotonic() < deadline, "the default build never started"
        time.sleep(0.05)


def builds_on(home: Path) -> list[int]:
    """Every live process on this machine building a default model for `home` (its sample
    clip is under `home`), whoever its parent is now: an orphan shows here too."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if is_default_build(cmd, home) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def build_state(server: ServeProcess) -> str:
    models = httpx.get(f"{server.http}/v1/models", timeout=30).json()
    state: str = models["default_build"]["state"]
    return state


def test_killed_server_takes_its_default_build_along(tmp_path: Path, assets: Assets) -> None:
    home = make_home(tmp_path / "home", assets)
    models = home / "models"
    first = ServeProcess(home, tmp_path / "serve.log", env=ENV).start()
    try:
        assert first.proc is not None
        (child,) = build_children(first.proc.pid)
        assert build_state(first) == "running"
        time.sleep(1.0)  # well into its start-up: the lifeline thread runs
        first.kill()
        deadline = time.monotonic() + 15
        while alive(child):
            assert time.monotonic() < deadline, "the default build outlived its server"
            time.sleep(0.1)
        assert not list(models.glob(f"{STAGING_PREFIX}{first.proc.pid}-*")), "staging left"
    finally:
        first.stop()

    second = ServeProcess(home, tmp_path / "serve.log", port=first.port, env=ENV).start()
    try:
        assert second.proc is not None
        (again,) = build_children(second.proc.pid)
        assert build_state(second) == "running"
        # One build for this home: the new server's, no orphan of the first beside it.
        assert builds_on(home) == [again]
        staging = [d.name for d in models.glob(f"{STAGING_PREFIX}*")]
        assert all(n.startswith(f"{STAGING_PREFIX}{second.proc.pid}-") for n in staging), staging
    finally:
        second.stop()
    # A clean stop ends the build too, and nothing of it is left.
    deadline = time.monotonic() + 30
    while alive(again):
        assert time.monotonic() < deadline, "the default build outlived a stopped server"
        time.sleep(0.1)
    assert builds_on(home) == []
    assert not list(models.glob(f"{STAGING_PREFIX}*"))
    assert [d.name for d in models.glob("*") if d.is_dir()] == [], "a version appeared"
