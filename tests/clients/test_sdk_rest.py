"""The SDK's REST helpers against a real server: single images and video jobs."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from ptq4vm_client import AsyncClient, Client, Job, ServiceError

from ptq4vm_core.io.video import iter_frames, open_writer
from tests.server.conftest import RunningServer


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
