"""The calibration child killed from outside (the OOM killer, an operator's `kill -9`), not
cancelled through the API (tests/server/test_admin.py covers DELETE): the job ends `failed`
saying how the process died, no partial version appears even when the artifact was already
written to staging, the active model and open sessions are untouched, and the queue goes on."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from server.calibration.manager import STAGING_PREFIX
from tests.faults.serve import children
from tests.server.conftest import Assets, RunningServer, ServerFactory
from tests.server.test_admin import AUTH, TOKEN, submit, wait_for
from tests.server.test_stream_errors import Witness


@pytest.fixture(scope="module")
def admin(start_server: ServerFactory) -> RunningServer:
    return start_server(admin_token=TOKEN, min_free_bytes=0)


def worker_pid(timeout: float = 60) -> int:
    """The calibration child of this process (the test server runs in a thread here)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p, cmd in children(os.getpid()) if "server.calibration.worker" in cmd]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the calibration child never started"
        time.sleep(0.02)


def registry_state(http: httpx.Client) -> dict[str, Any]:
    models: dict[str, Any] = http.get("/admin/models", headers=AUTH).json()
    return {"active": models["active"], "versions": {r["version"] for r in models["versions"]}}


def kill_and_check(admin: RunningServer, http: httpx.Client, job_id: str, pid: int) -> None:
    before = registry_state(http)
    os.kill(pid, signal.SIGKILL)
    job = wait_for(http, job_id, {"done", "failed", "cancelled"})
    assert job["state"] == "failed", job
    assert "killed by SIGKILL" in job["error"], job["error"]
    assert job["version"] is None
    assert registry_state(http) == before
    assert not list(admin.settings.models_dir.glob(f"{STAGING_PREFIX}*"))
    assert not (admin.settings.calibrations_dir / job_id).exists()


def test_killed_calibration_fails_cleanly(
    admin: RunningServer, assets: Assets, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    with Witness(admin, clip_rgb[:4]) as witness, admin.client() as http:
        job_id = submit(http, assets.clip, activate="true").json()["id"]
        queued = submit(http, assets.clip).json()["id"]
        kill_and_check(admin, http, job_id, worker_pid())
        witness.check()
        # The queue is not stuck behind the dead job: the next one runs (then is cancelled).
        wait_for(http, queued, {"running"})
        assert http.delete(f"/admin/calibrations/{queued}", headers=AUTH).status_code == 200
        assert wait_for(http, queued, {"cancelled", "failed", "done"})["state"] == "cancelled"


@pytest.mark.slow
def test_killed_after_the_artifact_was_written(
    admin: RunningServer, assets: Assets, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """Killed during the quality gate, when a complete artifact already sits in staging: it
    must not become a version."""
    with Witness(admin, clip_rgb[:4]) as witness, admin.client() as http:
        job_id = submit(http, assets.clip, activate="true").json()["id"]
        pid = worker_pid()
        manifest = admin.settings.models_dir / f"{STAGING_PREFIX}{job_id}" / "manifest.json"
        deadline = time.monotonic() + 600
        while not manifest.exists():
            assert time.monotonic() < deadline, "the artifact was never written"
            state = http.get(f"/admin/calibrations/{job_id}", headers=AUTH).json()["state"]
            assert state == "running", f"the job ended before it could be killed: {state}"
            time.sleep(0.02)
        kill_and_check(admin, http, job_id, pid)
        witness.check()
