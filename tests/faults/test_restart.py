"""The server SIGKILLed and restarted on the same PTQ4VM_HOME (issue 9): clients see the
connection drop and restart cleanly (a resume of a session the dead process held gets the
documented answer: a new session), the registry and the calibration records are intact, a
calibration that was running ends `failed` ("interrupted") and its child does not outlive
the server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed

from ptq4vm_core.artifact import verify_artifact
from server.calibration.manager import STAGING_PREFIX
from server.models.registry import ModelRegistry
from tests.faults.serve import ServeProcess, alive, children
from tests.server.client import Stream
from tests.server.conftest import Assets, make_home

TOKEN = "restart-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def home(tmp_path: Path, assets: Assets, quantized_artifact: Path) -> Path:
    """A home whose registry holds one quantized version, `v1`."""
    home = make_home(tmp_path / "home", assets)
    ModelRegistry(home).register(quantized_artifact, "v1")
    return home


def submit_calibration(http: httpx.Client, clip: Path) -> str:
    with clip.open("rb") as video:
        accepted = http.post(
            "/admin/calibrations",
            files=[("clips", ("clip.mp4", video, "video/mp4"))],
            data={"bits": "w8a8", "method": "minmax", "profile": "fast"},
            headers=AUTH,
        )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


def calibration_child(pid: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p, cmd in children(pid) if "server.calibration.worker" in cmd]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the calibration child never started"
        time.sleep(0.05)


def test_killed_server_restarts_with_registry_and_jobs(
    home: Path, tmp_path: Path, assets: Assets, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    env = {"PTQ4VM_ADMIN_TOKEN": TOKEN, "PTQ4VM_MIN_FREE_BYTES": "0"}
    first = ServeProcess(home, tmp_path / "serve.log", env=env).start()
    try:
        with httpx.Client(base_url=first.http, timeout=60) as http:
            assert http.post("/admin/models/v1/activate", headers=AUTH).status_code == 200
            job_id = submit_calibration(http, assets.clip)
            assert first.proc is not None
            child = calibration_child(first.proc.pid)
            with assets.clip.open("rb") as video:
                video_job = http.post(
                    "/v1/jobs", files={"video": ("a.mp4", video)}, data={"output": "alpha"}
                ).json()["id"]
        stream = Stream(first.ws, input="rgb24").__enter__()
        for seq in range(3):
            assert stream.matte(clip_rgb[seq].tobytes())[0]["model"] == "v1"
        session = stream.started["session"]

        first.kill()

        # The client sees the connection end without a close frame (1006).
        with pytest.raises(ConnectionClosed) as closed:
            stream.matte(clip_rgb[3].tobytes())
        assert closed.value.rcvd is None
        stream.close()
        # The calibration child notices its server is gone and stops, instead of computing a
        # version nobody will register.
        deadline = time.monotonic() + 15
        while alive(child):
            assert time.monotonic() < deadline, "the calibration child outlived its server"
            time.sleep(0.1)
    finally:
        first.stop()

    second = ServeProcess(home, tmp_path / "serve.log", port=first.port, env=env).start()
    try:
        with httpx.Client(base_url=second.http, timeout=60) as http:
            models = http.get("/v1/models").json()
            assert models["active"] == "v1"
            assert [r["version"] for r in models["versions"]] == ["fp32", "v1"]
            job = http.get(f"/admin/calibrations/{job_id}", headers=AUTH).json()
            assert job["state"] == "failed", job
            assert job["error"].startswith("interrupted")
            assert job["version"] is None
            # Video jobs live in memory: the documented answer after a restart is 404.
            assert http.get(f"/v1/jobs/{video_job}").status_code == 404
        # The client restarts cleanly: its old session id starts a new session, from seq 0 and
        # a zero state.
        with Stream(second.ws, session=session, input="rgb24") as again:
            assert (again.started["resumed"], again.started["next_seq"]) == (False, 0)
            assert again.started["model"] == "v1"
            meta, _ = again.matte(clip_rgb[3].tobytes())
            assert (meta["seq"], meta["fresh"], meta["model"]) == (0, True, "v1")
            again.stop()
    finally:
        second.stop()
    models_dir = home / "models"
    assert not list(models_dir.glob(f"{STAGING_PREFIX}*")), "a partial version was left"
    verify_artifact(models_dir / "v1")
    assert not list((home / "calibrations").glob("*/")), "the job's files were left"
