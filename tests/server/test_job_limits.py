"""Bounds on video jobs (issue 18), on a real server: `PTQ4VM_MAX_JOB_SECONDS` fails a job
that runs over it cleanly (its decoder child killed, its files removed, the server serving),
and `DELETE /v1/jobs/{id}` cancels a queued job as well as a running one."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.faults.serve import children
from tests.security.media import write_video
from tests.server.client import Stream
from tests.server.conftest import RunningServer, ServerFactory

# Frames the job needs: a few seconds of inference at the fastest, far over MAX_JOB_SECONDS.
LONG_FRAMES = 300
MAX_JOB_SECONDS = 0.5


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("jobs") / "long.mp4", 176, 144, LONG_FRAMES)


def submit(http: httpx.Client, video: Path) -> dict[str, Any]:
    with video.open("rb") as f:
        answer = http.post(
            "/v1/jobs", files={"video": ("v.mp4", f, "video/mp4")}, data={"output": "alpha"}
        )
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_state(
    http: httpx.Client, job_id: str, states: set[str], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def decoders() -> list[int]:
    """The decoder children of this process (the test server runs in a thread here)."""
    return [pid for pid, cmd in children(os.getpid()) if "server.media.video_child" in cmd]


def wait_no_decoders(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while decoders():
        assert time.monotonic() < deadline, f"decoder children left: {decoders()}"
        time.sleep(0.05)


def test_a_job_over_its_time_limit_fails_cleanly(
    start_server: ServerFactory, long_video: Path, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    server: RunningServer = start_server(max_job_seconds=MAX_JOB_SECONDS)
    with server.client() as http:
        job = submit(http, long_video)
        final = wait_state(http, job["id"], {"done", "failed", "cancelled"})
        assert final["state"] == "failed", final
        assert "PTQ4VM_MAX_JOB_SECONDS" in final["error"], final
        assert "/" not in final["error"].replace("PTQ4VM_", ""), final
        assert final["frames_done"] < LONG_FRAMES, final
        assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 409
        assert not (server.settings.jobs_dir / job["id"]).exists()
        wait_no_decoders()
        # The next job is accepted (the failed one gave its place back), and streams go on.
        second = submit(http, long_video)
        assert wait_state(http, second["id"], {"failed", "done"})["state"] == "failed"
    with Stream(server.ws, input="rgb24") as stream:
        meta, alpha = stream.matte(clip_rgb[0].tobytes())
        assert meta["seq"] == 0
        assert len(alpha) > 0


def test_delete_cancels_queued_and_running_jobs(
    start_server: ServerFactory, long_video: Path
) -> None:
    server: RunningServer = start_server(job_workers=1)
    with server.client() as http:
        running = submit(http, long_video)
        queued = submit(http, long_video)
        wait_state(http, running["id"], {"running"})
        assert http.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"

        # A page on another origin cannot cancel (DELETE is state-changing).
        foreign = http.delete(
            f"/v1/jobs/{running['id']}", headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403

        answer = http.delete(f"/v1/jobs/{queued['id']}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "cancelled"
        answer = http.delete(f"/v1/jobs/{running['id']}")
        assert answer.status_code == 200, answer.text
        for job in (queued, running):
            final = wait_state(http, job["id"], {"done", "failed", "cancelled"})
            assert final["state"] == "cancelled", final
            assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 409
            assert http.delete(f"/v1/jobs/{job['id']}").status_code == 409
            assert not (server.settings.jobs_dir / job["id"]).exists()
        assert http.delete("/v1/jobs/no-such-job").status_code == 404
        wait_no_decoders()
