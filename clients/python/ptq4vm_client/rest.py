"""REST helpers (DESIGN 4.4): single images, video jobs, admin calibrations and models.

`Client` blocks, `AsyncClient` is for asyncio; both wrap httpx and share the request
building and answer parsing below. Failed requests raise ServiceError with the HTTP status
and the server's `detail`.

Past 400 lines on purpose: the blocking and the asyncio client share the request building
and answer parsing here, so each route is spelled once for both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray

from ptq4vm_client.codec import Alpha, decode_png, encode_image
from ptq4vm_client.errors import JobFailedError, ServiceError, WaitTimeoutError

JobOutput = Literal["alpha", "rgba", "composite"]
Bits = Literal["w8a8", "w4a8", "w4a4"]
CalibrationMethod = Literal["minmax", "brecq", "qdrop", "ptq4vm"]
CalibrationProfile = Literal["fast", "standard", "paper"]
ImageInput = bytes | Path | NDArray[np.uint8]
_FINAL = {"done", "failed", "cancelled"}
T = TypeVar("T", "Job", "Calibration")


@dataclass(frozen=True)
class ImageMatte:
    """`POST /v1/matte`: the alpha `[H,W]` uint8, its PNG, and which model made it."""

    alpha: Alpha = field(repr=False)
    png: bytes = field(repr=False)
    model: str | None
    downsample_ratio: float | None
    inference_ms: float | None


@dataclass(frozen=True)
class Job:
    """A video job: `state` is queued, running, done or failed; `progress` in [0, 1] or None
    while the frame count is unknown."""

    id: str
    state: str
    progress: float | None
    error: str | None
    info: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.state in _FINAL


@dataclass(frozen=True)
class Calibration:
    """An admin calibration: state, stage, progress, metrics and the version it made."""

    id: str
    state: str
    stage: str | None
    progress: float | None
    metrics: dict[str, Any] | None
    version: str | None
    error: str | None
    info: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.state in _FINAL


# Shared request building and answer parsing ---------------------------------------------------


def _image_file(image: ImageInput) -> tuple[str, bytes, str]:
    if isinstance(image, Path):
        data = image.read_bytes()
        kind = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
        return image.name, data, kind
    if isinstance(image, np.ndarray):
        return "frame.png", encode_image(image, "png"), "image/png"
    return "frame", bytes(image), "application/octet-stream"


def _form(**values: Any) -> dict[str, str]:
    return {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in values.items()
        if v is not None
    }


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    request = response.request
    raise ServiceError(request.method, str(request.url), response.status_code, detail)


def _image_matte(response: httpx.Response) -> ImageMatte:
    headers = response.headers
    ratio, ms = headers.get("X-Downsample-Ratio"), headers.get("X-Inference-Ms")
    return ImageMatte(
        alpha=decode_png(response.content),
        png=response.content,
        model=headers.get("X-Model-Version"),
        downsample_ratio=float(ratio) if ratio else None,
        inference_ms=float(ms) if ms else None,
    )


def _job(response: httpx.Response) -> Job:
    obj: dict[str, Any] = _check(response).json()
    return Job(str(obj["id"]), str(obj.get("state")), obj.get("progress"), obj.get("error"), obj)


def _calibration(response: httpx.Response) -> Calibration:
    obj: dict[str, Any] = _check(response).json()
    return Calibration(
        id=str(obj["id"]),
        state=str(obj.get("state")),
        stage=obj.get("stage"),
        progress=obj.get("progress"),
        metrics=obj.get("metrics"),
        version=obj.get("version"),
        error=obj.get("error"),
        info=obj,
    )


def _clip_files(clips: Sequence[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    if not clips:
        raise ValueError("a calibration needs at least one clip")
    return [("clips", (c.name, c.read_bytes(), "application/octet-stream")) for c in clips]


def _bearer(token: str | None) -> dict[str, str]:
    if not token:
        raise ValueError("admin routes need admin_token (the server's PTQ4VM_ADMIN_TOKEN)")
    return {"Authorization": f"Bearer {token}"}


def _settled(kind: str, item: Job | Calibration) -> bool:
    if item.state == "failed" or item.state == "cancelled":
        raise JobFailedError(kind, item.id, item.error or item.state)
    return item.state == "done"


# Blocking client -------------------------------------------------------------------------------


class Client:
    """`Client("http://127.0.0.1:8000", admin_token=...)`; a context manager."""

    def __init__(
        self, base_url: str, *, admin_token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.admin_token = admin_token
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _admin(self) -> dict[str, str]:
        return _bearer(self.admin_token)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = _check(self._http.get("/healthz")).json()
        return result

    def models(self) -> dict[str, Any]:
        result: dict[str, Any] = _check(self._http.get("/v1/models")).json()
        return result

    def matte_image(
        self, image: ImageInput, *, downsample_ratio: float | None = None, model: str | None = None
    ) -> ImageMatte:
        """One image (PNG/JPEG bytes or path, or a `[H,W,3]` uint8 RGB array) -> its alpha."""
        files = {"image": _image_file(image)}
        data = _form(downsample_ratio=downsample_ratio, model=model)
        return _image_matte(_check(self._http.post("/v1/matte", files=files, data=data)))

    def submit_job(
        self,
        video: Path,
        output: JobOutput = "alpha",
        *,
        container: str | None = None,
        background: str | None = None,
        background_image: Path | bytes | None = None,
        downsample_ratio: float | None = None,
        model: str | None = None,
    ) -> Job:
        """`background` is a colour; `background_image` (a PNG/JPEG file or its bytes) is
        uploaded with the video and composited over instead."""
        with video.open("rb") as f:
            response = self._http.post(
                "/v1/jobs",
                files={
                    "video": (video.name, f, "application/octet-stream"),
                    **_background_file(background_image),
                },
                data=_form(
                    output=output,
                    container=container,
                    background=background,
                    downsample_ratio=downsample_ratio,
                    model=model,
                ),
            )
        return _job(response)

    def job(self, job_id: str) -> Job:
        return _job(self._http.get(f"/v1/jobs/{job_id}"))

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Polls until the job is done; JobFailedError if it failed."""
        return _poll("job", lambda: self.job(job_id), timeout, poll_s, on_progress, time.sleep)

    def download_result(self, job_id: str, path: Path) -> Path:
        """Streams the job's result to `path`."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if not response.is_success:
                response.read()
                _check(response)
            with path.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        return path

    # Admin (DESIGN 4.4; needs the server's PTQ4VM_ADMIN_TOKEN).

    def start_calibration(
        self,
        clips: Sequence[Path],
        *,
        bits: Bits = "w8a8",
        method: CalibrationMethod = "ptq4vm",
        profile: CalibrationProfile = "standard",
        activate: bool = False,
    ) -> Calibration:
        form = _form(bits=bits, method=method, profile=profile, activate=activate)
        response = self._http.post(
            "/admin/calibrations", files=_clip_files(clips), data=form, headers=self._admin()
        )
        return _calibration(response)

    def calibration(self, calibration_id: str) -> Calibration:
        url = f"/admin/calibrations/{calibration_id}"
        return _calibration(self._http.get(url, headers=self._admin()))

    def wait_calibration(
        self,
        calibration_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_progress: Callable[[Calibration], None] | None = None,
    ) -> Calibration:
        def get() -> Calibration:
            return self.calibration(calibration_id)

        return _poll("calibration", get, timeout, poll_s, on_progress, time.sleep)

    def admin_models(self) -> dict[str, Any]:
        result: dict[str, Any] = _check(
            self._http.get("/admin/models", headers=self._admin())
        ).json()
        return result

    def activate_model(self, version: str) -> dict[str, Any]:
        url = f"/admin/models/{version}/activate"
        result: dict[str, Any] = _check(self._http.post(url, headers=self._admin())).json()
        return result


def _poll(
    kind: str,
    get: Callable[[], T],
    timeout: float | None,
    poll_s: float,
    on_progress: Callable[[T], None] | None,
    sleep: Callable[[float], None],
) -> T:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        item = get()
        if on_progress is not None:
            on_progress(item)
        if _settled(kind, item):
            return item
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeoutError(f"{kind} {item.id} still {item.state} after {timeout} s")
        sleep(poll_s)


# Asyncio client --------------------------------------------------------------------------------


class AsyncClient:
    """The asyncio twin of :class:`Client` (same methods, awaitable)."""

    def __init__(
        self, base_url: str, *, admin_token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.admin_token = admin_token
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    def _admin(self) -> dict[str, str]:
        return _bearer(self.admin_token)

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = _check(await self._http.get("/healthz")).json()
        return result

    async def models(self) -> dict[str, Any]:
        result: dict[str, Any] = _check(await self._http.get("/v1/models")).json()
        return result

    async def matte_image(
        self, image: ImageInput, *, downsample_ratio: float | None = None, model: str | None = None
    ) -> ImageMatte:
        files = {"image": _image_file(image)}
        data = _form(downsample_ratio=downsample_ratio, model=model)
        return _image_matte(_check(await self._http.post("/v1/matte", files=files, data=data)))

    async def submit_job(
        self,
        video: Path,
        output: JobOutput = "alpha",
        *,
        container: str | None = None,
        background: str | None = None,
        background_image: Path | bytes | None = None,
        downsample_ratio: float | None = None,
        model: str | None = None,
    ) -> Job:
        """As `Client.submit_job`."""
        form = _form(
            output=output,
            container=container,
            background=background,
            downsample_ratio=downsample_ratio,
            model=model,
        )
        files = {
            "video": (video.name, video.read_bytes(), "application/octet-stream"),
            **_background_file(background_image),
        }
        return _job(await self._http.post("/v1/jobs", files=files, data=form))

    async def job(self, job_id: str) -> Job:
        return _job(await self._http.get(f"/v1/jobs/{job_id}"))

    async def wait_job(
        self, job_id: str, *, timeout: float | None = None, poll_s: float = 0.5
    ) -> Job:
        try:
            async with asyncio.timeout(timeout):
                while not _settled("job", job := await self.job(job_id)):
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            raise WaitTimeoutError(f"job {job_id} not done after {timeout} s") from None
        return job

    async def download_result(self, job_id: str, path: Path) -> Path:
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if not response.is_success:
                await response.aread()
                _check(response)
            with path.open("wb") as out:
                async for chunk in response.aiter_bytes(1 << 20):
                    out.write(chunk)
        return path

    async def start_calibration(
        self,
        clips: Sequence[Path],
        *,
        bits: Bits = "w8a8",
        method: CalibrationMethod = "ptq4vm",
        profile: CalibrationProfile = "standard",
        activate: bool = False,
    ) -> Calibration:
        form = _form(bits=bits, method=method, profile=profile, activate=activate)
        response = await self._http.post(
            "/admin/calibrations", files=_clip_files(clips), data=form, headers=self._admin()
        )
        return _calibration(response)

    async def calibration(self, calibration_id: str) -> Calibration:
        url = f"/admin/calibrations/{calibration_id}"
        return _calibration(await self._http.get(url, headers=self._admin()))

    async def wait_calibration(
        self, calibration_id: str, *, timeout: float | None = None, poll_s: float = 1.0
    ) -> Calibration:
        try:
            async with asyncio.timeout(timeout):
                while not _settled("calibration", cal := await self.calibration(calibration_id)):
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            raise WaitTimeoutError(
                f"calibration {calibration_id} not done after {timeout} s"
            ) from None
        return cal


def _background_file(image: Path | bytes | None) -> dict[str, tuple[str, bytes, str]]:
    """The `background_image` part of a job upload (the server reads no path of ours)."""
    if image is None:
        return {}
    if isinstance(image, Path):
        return {"background_image": (image.name, image.read_bytes(), "application/octet-stream")}
    return {"background_image": ("background", image, "application/octet-stream")}
