"""The SDK's REST helpers against a real server: single images, video jobs, admin
calibrations (a real MinMax calibration child at the fast profile)."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from ptq4vm_client import AsyncClient, Calibration, Client, Job, ServiceError

from ptq4vm_core.io.video import iter_frames, open_writer
from tests.server.conftest import Assets, RunningServer, ServerFactory

ADMIN_TOKEN = "sdk-admin-token"


def test_matte_image_equals_first_stream_frame(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
) -> None:
    with Client(server.http) as client:
        result = client.matte_image(clip_rgb[0])  # sent as PNG: lossless
    assert result.model == "fp32"
    assert result.inference_ms is not None
    np.testing.assert_array_equal(result.alpha, fp32_reference[0])


def test_video_job_round_trip(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], tmp_path: Path
) -> None:
    video = tmp_path / "clip.mp4"
    with open_writer(video, "rgb", width=176, height=144, fps=Fraction(15)) as writer:
        for frame in clip_rgb[:8]:
            writer.write(frame)
    progress: list[Job] = []
    with Client(server.http) as client:
        job = client.submit_job(video, "alpha")
        assert job.state in ("queued", "running")
        done = client.wait_job(job.id, timeout=120, poll_s=0.2, on_progress=progress.append)
        result = client.download_result(job.id, tmp_path / "alpha.mp4")
    assert done.state == "done"
    assert done.progress == 1.0
    assert progress[-1].state == "done"
    assert len(list(iter_frames(result))) == 8


def test_errors_name_status_and_detail(server: RunningServer, tmp_path: Path) -> None:
    not_video = tmp_path / "notes.mp4"
    not_video.write_bytes(b"not a video")

    async def run() -> None:
        async with AsyncClient(server.http) as client:
            assert (await client.health())["status"] == "ok"
            with pytest.raises(ServiceError) as exc:
                await client.submit_job(not_video)
            assert exc.value.status == 415
            with pytest.raises(ServiceError) as missing:
                await client.job("no-such-job")
            assert missing.value.status == 404
            with pytest.raises(ValueError, match="admin_token"):
                await client.calibration("x")

    asyncio.run(run())


def test_admin_calibration_with_progress_activate_and_roll_back(
    start_server: ServerFactory, assets: Assets
) -> None:
    admin = start_server(admin_token=ADMIN_TOKEN, min_free_bytes=0)
    progress: list[Calibration] = []
    with Client(admin.http, admin_token="wrong") as wrong, pytest.raises(ServiceError) as refused:
        wrong.admin_models()
    assert refused.value.status == 403
    with Client(admin.http, admin_token=ADMIN_TOKEN) as client:
        job = client.start_calibration(
            [assets.clip], method="minmax", profile="fast", activate=True
        )
        assert job.state in ("queued", "running")
        done = client.wait_calibration(job.id, timeout=300, poll_s=0.2, on_progress=progress.append)
        assert done.state == "done", done.error
        assert done.version is not None
        assert done.metrics is not None
        assert done.metrics["passed"] is True
        assert progress[-1].finished
        assert any(p.stage not in (None, "start") for p in progress)  # stages were reported
        assert client.admin_models()["active"] == done.version
        assert client.activate_model("fp32") == {"active": "fp32"}
        assert client.models()["active"] == "fp32"
