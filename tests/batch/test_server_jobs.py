"""`/v1/jobs` on Ray (PTQ4VM_RAY_ADDRESS): the same API and states as in process, and the
same result, from a real server whose jobs run on the test session's Ray cluster."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ptq4vm_core.io.video import iter_frames
from tests.server.conftest import ServerFactory

pytest.importorskip("ray")


def run_job(http: httpx.Client, clip: Path, **form: str) -> tuple[list[dict[str, Any]], bytes]:
    with clip.open("rb") as video:
        files = {"video": (clip.name, video, "video/mp4")}
        response = http.post("/v1/jobs", files=files, data=form)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = http.get(f"/v1/jobs/{job_id}").json()
        seen.append(status)
        if status["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert seen[-1]["state"] == "done", seen[-1]
    result = http.get(seen[-1]["result"])
    assert result.status_code == 200
    return seen, result.content


def test_jobs_on_ray_match_the_in_process_worker(
    ray_client: str, start_server: ServerFactory, clips: dict[str, Path], tmp_path: Path
) -> None:
    on_ray = start_server(ray_address=ray_client)
    local = start_server()
    form = {"output": "composite", "background": "#2040ff"}
    with on_ray.client() as http:
        seen, ray_result = run_job(http, clips["a"], **form)
    with local.client() as http:
        _, local_result = run_job(http, clips["a"], **form)

    final = seen[-1]
    assert final["frames_done"] == final["frames_total"] == 8
    assert final["progress"] == 1.0
    assert {s["state"] for s in seen} <= {"queued", "running", "done"}
    remote = on_ray.services.jobs._remote
    assert remote is not None, "PTQ4VM_RAY_ADDRESS must route jobs to Ray"
    assert local.services.jobs._remote is None

    (tmp_path / "ray.mp4").write_bytes(ray_result)
    (tmp_path / "local.mp4").write_bytes(local_result)
    ours = list(iter_frames(tmp_path / "ray.mp4"))
    theirs = list(iter_frames(tmp_path / "local.mp4"))
    assert len(ours) == len(theirs) == 8
    for mine, expected in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, expected)
