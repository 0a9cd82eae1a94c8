"""REST on a real server: `POST /v1/matte` and video jobs (DESIGN 4.4)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.io.video import iter_frames, iter_rgba_frames, open_writer, probe
from tests.server.client import decode_png
from tests.server.conftest import RunningServer, ServerFactory

SHORT = 24


def png(frame: NDArray[np.uint8]) -> bytes:
    return cv2.imencode(".png", frame[..., ::-1])[1].tobytes()


def submit(http: httpx.Client, clip: Path, data: dict[str, str]) -> httpx.Response:
    """POST /v1/jobs with `clip` as the video and `data` as the form."""
    with clip.open("rb") as video:
        return http.post("/v1/jobs", files={"video": ("clip.mp4", video, "video/mp4")}, data=data)


def test_matte_a_png(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], fp32_reference: list[Any]
) -> None:
    with server.client() as http:
        response = http.post("/v1/matte", files={"image": ("f.png", png(clip_rgb[0]), "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "fp32"
    # A single image is a fresh stream: the same alpha as the clip's first frame.
    np.testing.assert_array_equal(decode_png(response.content), fp32_reference[0])


def test_matte_refuses_what_is_not_an_image(server: RunningServer) -> None:
    with server.client() as http:
        response = http.post("/v1/matte", files={"image": ("x.png", b"plain text", "image/png")})
        assert response.status_code == 415
        assert "cannot decode" in response.json()["detail"]
        response = http.post(
            "/v1/matte",
            files={"image": ("f.png", png(np.zeros((32, 32, 3), np.uint8)), "image/png")},
            data={"model": "nope"},
        )
        assert response.status_code == 422
        assert "unknown model 'nope'" in response.json()["detail"]


def wait_for(http: httpx.Client, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/v1/jobs/{job_id}").json()
        seen.append(status)
        if status["state"] in ("done", "failed"):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {seen[-1]}")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory, clip_rgb: list[Any]) -> Path:
    """The sample clip's first SHORT frames as an H.264 mp4 (jobs on it take seconds)."""
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    with open_writer(path, "rgb", width=176, height=144, fps=Fraction(25)) as writer:
        for frame in clip_rgb[:SHORT]:
            writer.write(frame)
    return path


def test_alpha_job_completes_with_progress(
    server: RunningServer, short_clip: Path, tmp_path: Path
) -> None:
    with server.client() as http:
        response = submit(http, short_clip, {"output": "alpha"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        seen = wait_for(http, job_id)
        final = seen[-1]
        assert final["state"] == "done", final
        assert final["progress"] == 1.0
        assert final["frames_done"] == final["frames_total"] == SHORT
        progress = [s["progress"] for s in seen if s["progress"] is not None]
        assert progress == sorted(progress)
        assert all(0.0 <= p <= 1.0 for p in progress)
        result = http.get(final["result"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    out = tmp_path / "alpha.mp4"
    out.write_bytes(result.content)
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (176, 144, SHORT)
    assert sum(1 for _ in iter_frames(out)) == SHORT


def test_rgba_job_keeps_alpha(server: RunningServer, short_clip: Path, tmp_path: Path) -> None:
    with server.client() as http:
        response = submit(http, short_clip, {"output": "rgba"})
        assert response.status_code == 202, response.text
        final = wait_for(http, response.json()["id"])[-1]
        assert final["state"] == "done", final
        result = http.get(final["result"])
    assert result.headers["content-type"] == "video/webm"
    out = tmp_path / "rgba.webm"
    out.write_bytes(result.content)
    frames = list(iter_rgba_frames(out))
    assert len(frames) == SHORT
    alpha = frames[-1][..., 3]
    assert alpha.min() < 50 < 200 < alpha.max()  # a real matte: background and person


def test_job_refuses_what_is_not_a_video(server: RunningServer) -> None:
    with server.client() as http:
        response = http.post(
            "/v1/jobs",
            files={"video": ("clip.mp4", b"not a video" * 100, "video/mp4")},
            data={"output": "alpha"},
        )
        assert response.status_code == 415
        assert "not a video" in response.json()["detail"]
        response = http.post(
            "/v1/jobs",
            files={"video": ("clip.mp4", b"x", "video/mp4")},
            data={"output": "rgba", "container": "mp4"},
        )
        assert response.status_code == 422
        assert "webm, mov" in response.json()["detail"]


def test_unknown_and_unfinished_jobs(server: RunningServer) -> None:
    with server.client() as http:
        assert http.get("/v1/jobs/nope").status_code == 404
        assert http.get("/v1/jobs/nope/result").status_code == 404


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs", "video"), ("/v1/matte", "image")])
def test_oversized_upload_is_413(start_server: ServerFactory, path: str, field: str) -> None:
    server = start_server(max_upload_bytes=200_000, max_image_bytes=200_000)
    with server.client() as http:
        response = http.post(
            path,
            files={field: ("big.mp4", b"\x00" * 300_000, "video/mp4")},
            data={"output": "alpha"},
        )
    assert response.status_code == 413
    assert "200000 bytes" in response.json()["detail"]


def test_chunked_upload_is_cut_off_at_the_limit(start_server: ServerFactory) -> None:
    """No Content-Length: the body is counted as it arrives."""
    server = start_server(max_upload_bytes=200_000)
    boundary = "limit-test"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="output"\r\n\r\n'
            f'alpha\r\n--{boundary}\r\nContent-Disposition: form-data; name="video"; '
            f'filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        ).encode()
        for _ in range(30):
            yield b"\x00" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    with server.client() as http:
        response = http.post(
            "/v1/jobs",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 413
    assert "PTQ4VM_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_composite_job_expires(start_server: ServerFactory, short_clip: Path) -> None:
    server = start_server(job_ttl_s=1.0)
    with server.client() as http:
        response = submit(http, short_clip, {"output": "composite", "background": "#0000ff"})
        job_id = response.json()["id"]
        final = wait_for(http, job_id)[-1]
        assert final["state"] == "done", final
        assert final["frames_done"] == SHORT
        job_dir = server.settings.jobs_dir / job_id
        assert job_dir.is_dir()
        deadline = time.monotonic() + 10
        while http.get(f"/v1/jobs/{job_id}").status_code != 404:
            assert time.monotonic() < deadline, "the job did not expire"
            time.sleep(0.1)
        assert http.get(f"/v1/jobs/{job_id}/result").status_code == 404
    assert not job_dir.exists()
