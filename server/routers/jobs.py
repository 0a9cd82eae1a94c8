"""Video jobs (DESIGN 4.4): `POST /v1/jobs` -> 202 {"id"}, `GET /v1/jobs/{id}`, its result."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse

from ptq4vm_core.io.video import VideoError, parse_background
from server.codec import validate_video
from server.deps import JobsDep, RegistryDep
from server.jobs import OUTPUTS, Container, Job, JobsFullError, JobState, OutputKind
from server.limits import MALFORMED_UPLOAD, disk_full

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _save(source: BinaryIO, target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


@router.post(
    "",
    status_code=202,
    responses={
        **MALFORMED_UPLOAD,
        413: {"description": "The upload is over PTQ4VM_MAX_UPLOAD_BYTES."},
        415: {"description": "Not a video that can be decoded."},
        422: {"description": "Bad output, container, background, ratio or model."},
        503: {"description": "Too many jobs queued (PTQ4VM_MAX_JOBS)."},
        507: {"description": "The disk filled up while the upload was stored."},
    },
)
async def create_job(
    video: Annotated[UploadFile, File(description="A video file PyAV can decode.")],
    output: Annotated[OutputKind, Form(description="alpha, rgba or composite.")],
    jobs: JobsDep,
    registry: RegistryDep,
    container: Annotated[
        Container | None,
        Form(description="mp4 (default for alpha, composite), webm (default for rgba) or mov."),
    ] = None,
    background: Annotated[str, Form(description="Composite background colour.")] = "green",
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
    try:
        parse_background(background, 2, 2)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        job_id, job_dir = jobs.new_dir()
    except OSError as exc:
        raise disk_full(exc) or exc from None
    suffix = Path(video.filename or "").suffix.lower()[:8] or ".bin"
    source = job_dir / f"input{suffix}"
    try:
        await asyncio.to_thread(_save, video.file, source)
        await asyncio.to_thread(validate_video, source)
    except VideoError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise HTTPException(
            415, f"{video.filename or 'upload'} is not a video that can be decoded: {exc}"
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
    )
    try:
        jobs.submit(job)
    except JobsFullError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from None
    return job.describe()


def _job(jobs: JobsDep, job_id: str) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"unknown or expired job {job_id!r}")
    return job


@router.get("/{job_id}", responses={404: {"description": "Unknown or expired job."}})
def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """State (queued, running, done, failed), progress in [0, 1] (null while the frame count
    is unknown), frames done, the error of a failed job, and when the result expires."""
    return _job(jobs, job_id).describe()


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}, "video/webm": {}, "video/quicktime": {}}},
        404: {"description": "Unknown or expired job."},
        409: {"description": "The job has not finished, or failed."},
    },
)
def get_result(job_id: str, jobs: JobsDep) -> FileResponse:
    job = _job(jobs, job_id)
    if job.state is not JobState.DONE:
        detail = f"job {job_id} is {job.state.value}"
        if job.error:
            detail += f": {job.error}"
        raise HTTPException(409, detail)
    return FileResponse(
        job.result, media_type=job.media_type, filename=f"{job_id}-{job.output}.{job.container}"
    )
