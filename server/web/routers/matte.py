"""`POST /v1/matte`: one image in, its alpha matte out as an 8-bit grey PNG (DESIGN 4.4)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.responses import Response

from ptq4vm_core.engine import ModelNotFoundError
from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.inference.scheduler import Work
from server.media.sniff import MediaError
from server.models.registry import ModelUnavailableError
from server.redact import redact
from server.services import media_limits as settings_limits
from server.streaming.codec import (
    FrameError,
    decode_image,
    encode_alpha,
    image_size,
    network_size_error,
)
from server.web.deps import CompilerDep, MetricsDep, RegistryDep, SchedulerDep, SettingsDep
from server.web.responses import BAD_ORIGIN, MALFORMED_UPLOAD, UPLOADS_BUSY, errors

router = APIRouter(prefix="/v1", tags=["matte"])

ERRORS = errors(
    {
        400: MALFORMED_UPLOAD,
        403: BAD_ORIGIN,
        413: "The upload is over PTQ4VM_MAX_IMAGE_BYTES or PTQ4VM_MAX_PIXELS.",
        415: "Not an image (PNG or JPEG) that can be decoded.",
        422: "Unknown model, bad downsample_ratio, or one too small for the image.",
        503: f"The model cannot be loaded. {UPLOADS_BUSY}",
    }
)


@router.post(
    "/matte",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "Alpha matte."},
        **ERRORS,
    },
)
async def matte(
    image: Annotated[UploadFile, File(description="PNG or JPEG image.")],
    registry: RegistryDep,
    scheduler: SchedulerDep,
    compiler: CompilerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    downsample_ratio: Annotated[float | None, Form(gt=0, le=1)] = None,
    model: Annotated[str | None, Form(description="fp32 or a version; default: active.")] = None,
) -> Response:
    """The image's alpha as a grey PNG of the same size (a single frame: no recurrent state).
    Headers say which model and downsample ratio made it."""
    data = await image.read()
    name = (image.filename or "upload")[:64]
    try:
        width, height = image_size(data)
        settings_limits(settings).check_pixels(width, height, name)
        rgb = await asyncio.to_thread(decode_image, data)
    except FrameError as exc:
        raise HTTPException(415, f"{name}: {exc}") from None
    except MediaError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    ratio = resolve_downsample_ratio(downsample_ratio, width, height)
    problem = network_size_error(width, height, ratio)
    if problem is not None:
        raise HTTPException(422, problem)
    try:
        lease = await asyncio.to_thread(registry.acquire, model)
    except ModelNotFoundError as exc:
        raise HTTPException(422, str(exc)) from None
    except ModelUnavailableError as exc:
        raise HTTPException(503, redact(str(exc))) from None
    with lease:
        # A new image size compiles here, off the loop and outside the shared inference
        # workers, at lower priority (the engine keeps a bounded number of sizes).
        await compiler.compile(lease.engine, height, width, ratio, alpha_only=True)
        work = Work(
            engine=lease.engine,
            model=lease.version,
            size=(height, width),
            ratio=ratio,
            state=None,
            decode=lambda: rgb,
            finish=lambda fgr, alpha: encode_alpha(alpha, "alpha_png"),
            alpha_only=True,
        )
        done = await scheduler.run(work)
    metrics.http_mattes.inc()
    return Response(
        done.payload,
        media_type="image/png",
        headers={
            "X-Model-Version": lease.version,
            "X-Downsample-Ratio": f"{ratio:g}",
            "X-Inference-Ms": f"{done.infer_s * 1e3:.1f}",
        },
    )
