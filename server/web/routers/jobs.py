"""Video jobs (DESIGN 4.4): `POST /v1/jobs` -> 202 {"id"}, `GET /v1/jobs/{id}`, its result,
`DELETE /v1/jobs/{id}` to cancel. Public input is data, never a name: `background` is a colour,
or an image uploaded in the same request (`background_image`)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse

from ptq4vm_core.io.compose import parse_colour
from server.jobs.manager import (
    OUTPUTS,
    Container,
    Job,
    JobFinishedError,
    JobsFullError,
    JobState,
    OutputKind,
)
from server.media.sniff import MediaError, image_header
from server.media.video import probe_upload
from server.redact import redact
from server.services import media_limits
from server.settings import Settings
from server.web.deps import JobsDep, RegistryDep, SettingsDep
from server.web.limits import disk_full
from server.web.responses import (
    BAD_ORIGIN,
    BAD_PARAMETERS,
    MALFORMED_UPLOAD,
    UPLOADS_BUSY,
    JobStatus,
    errors,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _save(source: BinaryIO, target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _colour(background: str) -> None:
    try:
        colour = parse_colour(background)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if colour is None:
        raise HTTPException(
            422,
            "background must be a colour: a name (green, blue, ...), #RRGGBB or R,G,B; send "
            "an image as the background_image part (no file on the server can be named)",
        )


def _save_background(upload: UploadFile, target: Path, settings: Settings) -> None:
    """Stores an uploaded background image after checking its header: PNG or JPEG, at most
    PTQ4VM_MAX_IMAGE_BYTES and PTQ4VM_MAX_PIXELS. MediaError otherwise."""
    data = upload.file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise MediaError(
            413,
            f"background_image is over {settings.max_image_bytes} bytes (PTQ4VM_MAX_IMAGE_BYTES)",
        )
    header = image_header(data)
    media_limits(settings).check_pixels(header.width, header.height, "background_image")
    target.write_bytes(data)


@router.post(
    "",
    status_code=202,
    response_model=JobStatus,
    responses=errors(
        {
            400: MALFORMED_UPLOAD,
            403: BAD_ORIGIN,
            413: "Over PTQ4VM_MAX_UPLOAD_BYTES, PTQ4VM_MAX_PIXELS, PTQ4VM_MAX_VIDEO_SECONDS or "
            "PTQ4VM_MAX_VIDEO_FRAMES.",
            415: "Not an MP4/MOV, WebM/Matroska or AVI video that decodes, or a "
            "background_image that is not a PNG or JPEG.",
            422: "Bad output, container, background, ratio or model.",
            503: f"Too many jobs queued (PTQ4VM_MAX_JOBS). {UPLOADS_BUSY}",
            507: "The disk filled up while the upload was stored.",
        }
    ),
)
async def create_job(
    video: Annotated[UploadFile, File(description="A video file PyAV can decode.")],
    output: Annotated[OutputKind, Form(description="alpha, rgba or composite.")],
    jobs: JobsDep,
    registry: RegistryDep,
    settings: SettingsDep,
    container: Annotated[
        Container | None,
        Form(description="mp4 (default for alpha, composite), webm (default for rgba) or mov."),
    ] = None,
    background: Annotated[
        str, Form(description="Composite background colour: a name, #RRGGBB or R,G,B.")
    ] = "green",
    background_image: Annotated[
        UploadFile | None,
        File(description="A PNG or JPEG to composite over instead of the colour."),
    ] = None,
    downsample_ratio: Annotated[float | None, Form(gt=0, le=1)] = None,
    model: Annotated[str | None, Form(description="fp32 or a version; default: active.")] = None,
) -> dict[str, Any]:
    """Queue a video for matting. Output: `alpha` (grey video), `rgba` (WebM VP9 with alpha,
    or ProRes 4444 with container=mov) or `composite` (over `background`, with the input's
    audio). Poll `GET /v1/jobs/{id}`; fetch `GET /v1/jobs/{id}/result` when done."""
    choices = OUTPUTS[output][1]
    chosen = container or choices[0]
    if chosen not in choices:
        raise HTTPException(
            422, f"output {output} can be written as {', '.join(choices)}, not {chosen}"
        )
    if model is not None and not registry.exists(model):
        raise HTTPException(422, f"unknown model {model!r}; see GET /v1/models")
    _colour(background)
    try:
        job_id, job_dir = jobs.new_dir()
    except OSError as exc:
        raise disk_full(exc) or exc from None
    # The client's file name is never part of a server path.
    source = job_dir / "input.video"
    bg_image = job_dir / "background.image" if background_image is not None else None
    try:
        if background_image is not None and bg_image is not None:
            await asyncio.to_thread(_save_background, background_image, bg_image, settings)
        await asyncio.to_thread(_save, video.file, source)
        await asyncio.to_thread(
            probe_upload, source, media_limits(settings), nice=settings.job_nice
        )
    except MediaError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        if bg_image is not None and not source.exists():
            raise HTTPException(exc.status, f"background_image: {exc}") from None
        raise HTTPException(
            exc.status, f"the upload is not a video this server takes: {exc}"
        ) from None
    except OSError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise disk_full(exc) or exc from None
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    job = Job(
        id=job_id,
        dir=job_dir,
        input=source,
        output=output,
        container=chosen,
        model=model,
        downsample_ratio=downsample_ratio,
        background=background,
        background_image=bg_image,
    )
    try:
        jobs.submit(job)
    except JobsFullError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from None
    return job.describe()


@router.delete(
    "/{job_id}",
    response_model=JobStatus,
    responses=errors(
        {
            403: BAD_ORIGIN,
            404: "Unknown or expired job.",
            409: "The job has finished.",
            422: BAD_PARAMETERS,
        }
    ),
)
def cancel_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Cancel a queued or running job: its decoder is stopped, its files removed; the job
    (state `cancelled`) stays listed until it expires."""
    try:
        job = jobs.cancel(job_id)
    except JobFinishedError as exc:
        raise HTTPException(409, str(exc)) from None
    if job is None:
        raise HTTPException(404, f"unknown or expired job {job_id!r}")
    return job.describe()


def _job(jobs: JobsDep, job_id: str) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"unknown or expired job {job_id!r}")
    return job


@router.get(
    "/{job_id}",
    response_model=JobStatus,
    responses=errors({404: "Unknown or expired job.", 422: BAD_PARAMETERS}),
)
def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """State (queued, running, done, failed, cancelled), progress in [0, 1] (null while the
    frame count is unknown), frames done, the error of a failed job, and when the result
    expires."""
    return _job(jobs, job_id).describe()


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}, "video/webm": {}, "video/quicktime": {}}},
        **errors(
            {
                404: "Unknown or expired job.",
                409: "The job has not finished, or failed.",
                422: BAD_PARAMETERS,
            }
        ),
    },
)
def get_result(job_id: str, jobs: JobsDep) -> FileResponse:
    job = _job(jobs, job_id)
    if job.state is not JobState.DONE:
        detail = f"job {job_id} is {job.state.value}"
        if job.error:
            detail += f": {redact(job.error)}"
        raise HTTPException(409, detail)
    return FileResponse(
        job.result, media_type=job.media_type, filename=f"{job_id}-{job.output}.{job.container}"
    )
