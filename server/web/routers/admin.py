"""Admin routes (DESIGN 4.4): recalibration on uploaded clips, versions, activation/rollback.

Every route needs `Authorization: Bearer $PTQ4VM_ADMIN_TOKEN` (401 without it, 403 with a
wrong one); with the token unset the routes answer 404, as if they did not exist. The check
runs twice: in server.web.admission before any body is read, and here as the routes' dependency.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, UploadFile

from ptq4vm_core.calib.methods import Base, Method, Profile
from ptq4vm_core.engine import ModelNotFoundError
from ptq4vm_core.engine.cpu import default_int8_target
from ptq4vm_core.quant.spec import Bits, Int8Target
from server.calibration.manager import Calibration, InsufficientStorageError, NotCancellableError
from server.calibration.protocol import (
    MAX_SYNTHETIC_BACKGROUNDS,
    CalibrationOptions,
    check_options,
)
from server.calibration.speed import SpeedReport, measure_speed, speed_spec
from server.media.sniff import MediaError
from server.media.video import probe_upload
from server.models.registry import ModelRegistry, ModelUnavailableError
from server.services import media_limits
from server.settings import Settings
from server.web.admission import admin_refusal
from server.web.deps import CalibrationsDep, RegistryDep, SettingsDep
from server.web.limits import disk_full
from server.web.responses import (
    BAD_ORIGIN,
    BAD_PARAMETERS,
    MALFORMED_UPLOAD,
    UPLOADS_BUSY,
    ActiveModel,
    AdminModelList,
    CalibrationStatus,
    errors,
)

logger = logging.getLogger(__name__)


def require_admin(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    refusal = admin_refusal(settings, authorization)
    if refusal is not None:
        raise refusal


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors(
        {
            401: "No bearer token.",
            403: f"Wrong token. {BAD_ORIGIN}",
            404: "Admin is off (PTQ4VM_ADMIN_TOKEN unset), or no such item.",
            422: BAD_PARAMETERS,
        }
    ),
)


def _save(source: BinaryIO, target: Path) -> tuple[str, int]:
    """Copies an upload to `target`; returns its (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


async def _store(upload: UploadFile, target: Path, what: str, settings: Settings) -> dict[str, Any]:
    try:
        sha256, size = await asyncio.to_thread(_save, upload.file, target)
    except OSError as exc:
        raise disk_full(exc) or exc from None
    try:
        await asyncio.to_thread(
            probe_upload, target, media_limits(settings), nice=settings.calibration_nice
        )
    except MediaError as exc:
        name = (upload.filename or "upload")[:64]
        why = "is not a video that can be decoded here: " if exc.status == 415 else ""
        raise HTTPException(exc.status, f"{what} ({name}) {why}{exc}") from None
    return {"name": upload.filename or "", "file": target.name, "sha256": sha256, "bytes": size}


@router.post(
    "/calibrations",
    status_code=202,
    response_model=CalibrationStatus,
    responses=errors(
        {
            400: MALFORMED_UPLOAD,
            413: "The uploads are over PTQ4VM_MAX_CALIBRATION_BYTES, or a clip over "
            "PTQ4VM_MAX_PIXELS, PTQ4VM_MAX_VIDEO_SECONDS or PTQ4VM_MAX_VIDEO_FRAMES.",
            415: "A clip or alpha that is not an allowed video that decodes.",
            422: "Bad bits, method, profile, or alphas that do not match clips.",
            503: UPLOADS_BUSY,
            507: "Less free disk space than PTQ4VM_MIN_FREE_BYTES, or the disk filled up while "
            "the uploads were stored.",
        }
    ),
)
async def create_calibration(
    clips: Annotated[list[UploadFile], File(description="Videos PyAV can decode.")],
    bits: Annotated[Bits, Form()],
    calibrations: CalibrationsDep,
    settings: SettingsDep,
    alphas: Annotated[
        list[UploadFile] | None,
        File(description="Optional ground-truth alpha videos, one per clip, in clip order."),
    ] = None,
    method: Annotated[Method, Form()] = Method.PTQ4VM,
    profile: Annotated[Profile, Form()] = Profile.STANDARD,
    activate: Annotated[
        bool,
        Form(description="Activate when the quality gate passes and it is faster here."),
    ] = False,
    int8_target: Annotated[
        Int8Target | None,
        Form(
            description="The int8 kernels to calibrate for: `vnni` or `avx2` (saturation-safe "
            "weights for CPUs without VNNI); default: this server's CPU class."
        ),
    ] = None,
    float_inputs: Annotated[
        str,
        Form(
            description="Mixed precision, as `ptq4vm calibrate --float-inputs`: layers whose "
            "input activations stay in float, comma-separated, or `sensitive` / `cheap`."
        ),
    ] = "",
    base: Annotated[Base, Form(description="PTQ4VM's BIQ stage (`--base`).")] = Base.QDROP,
    gac: Annotated[bool, Form(description="PTQ4VM's GAC (false: `--no-gac`).")] = True,
    ofa: Annotated[bool, Form(description="PTQ4VM's OFA (false: `--no-ofa`).")] = True,
    synthetic_backgrounds: Annotated[
        int,
        Form(
            ge=0,
            le=MAX_SYNTHETIC_BACKGROUNDS,
            description="Labelled clips made from the sample clip over N synthesized "
            "backgrounds (`--synthetic-backgrounds`).",
        ),
    ] = 0,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1, description="Random seed (`--seed`).")] = 0,
) -> dict[str, Any]:
    """Queue a calibration on `clips`. The last PTQ4VM_GATE_HOLDOUT of each clip's frames are
    held out for the quality gate; with `activate`, the new version replaces the active one
    only if it passes the gate and is faster on this CPU (both timed, `metrics.speed`). Poll
    `GET /admin/calibrations/{id}`."""
    options = CalibrationOptions(
        float_inputs=float_inputs, base=base, gac=gac, ofa=ofa,
        synthetic_backgrounds=synthetic_backgrounds, seed=seed,
    )  # fmt: skip
    try:  # the options are checked as the CLI checks them, before any upload is stored
        check_options(bits, method, profile, int8_target or default_int8_target(), options)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    alphas = alphas or []
    if alphas and len(alphas) != len(clips):
        raise HTTPException(422, f"{len(alphas)} alphas for {len(clips)} clips: give one per clip")
    try:
        calibrations.check_disk()
    except InsufficientStorageError as exc:
        raise HTTPException(507, str(exc)) from None
    try:
        job_id, job_dir = calibrations.new_dir()
    except OSError as exc:
        raise disk_full(exc) or exc from None
    try:
        rows = []
        for index, clip in enumerate(clips):
            row = await _store(clip, job_dir / f"clip{index}.video", f"clip {index + 1}", settings)
            row["alpha"] = None
            if alphas:
                alpha = await _store(
                    alphas[index], job_dir / f"alpha{index}.video", f"alpha {index + 1}", settings
                )
                row["alpha"] = alpha["file"]
            rows.append(row)
        job = Calibration(
            id=job_id,
            bits=bits,
            method=method,
            profile=profile,
            activate=activate,
            clips=rows,
            int8_target=int8_target or default_int8_target(),
            options=options.model_dump(mode="json"),
        )
        calibrations.submit(job)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return job.describe()


def _found(job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    if job is None:
        raise HTTPException(404, f"unknown calibration {job_id!r}")
    return job


@router.get("/calibrations", response_model=list[CalibrationStatus])
def list_calibrations(calibrations: CalibrationsDep) -> list[dict[str, Any]]:
    """Every job the store remembers, oldest first."""
    return calibrations.list()


@router.get("/calibrations/{job_id}", response_model=CalibrationStatus)
def get_calibration(job_id: str, calibrations: CalibrationsDep) -> dict[str, Any]:
    """state (queued, running, done, failed, cancelled), stage, progress in [0, 1], eta_s,
    loss, metrics (the quality gate's report), version, activated, error."""
    return _found(calibrations.get(job_id), job_id)


@router.delete(
    "/calibrations/{job_id}",
    response_model=CalibrationStatus,
    responses=errors({409: "The job has finished, or is registering its version."}),
)
def cancel_calibration(job_id: str, calibrations: CalibrationsDep) -> dict[str, Any]:
    """Cancel a queued or running job: its process is killed, its files removed."""
    try:
        return _found(calibrations.cancel(job_id), job_id)
    except NotCancellableError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/models", response_model=AdminModelList, response_model_exclude_unset=True)
def list_models(registry: RegistryDep) -> dict[str, Any]:
    """Every version with its active flag and manifest metrics (the gate report included)."""
    return {"active": registry.active(), "versions": registry.describe()}


@router.post(
    "/models/{version}/activate",
    response_model=ActiveModel,
    response_model_exclude_none=True,
    responses=errors({409: "The version cannot be loaded."}),
)
async def activate_model(
    version: str,
    registry: RegistryDep,
    settings: SettingsDep,
    measure: Annotated[
        bool,
        Query(
            description="Time it against the active model first (seconds of work; off by "
            "default, so that a rollback is immediate)."
        ),
    ] = False,
) -> dict[str, Any]:
    """Make any registered version (or fp32) active, faster or not (this is the override of
    the automatic rule); also how to roll back. The response's `speed`: with `measure`, the
    version timed now against the model it replaced on this CPU's engines; otherwise the
    figures recorded when it was built (`metrics.speed`), where there are any."""
    try:
        speed = await asyncio.to_thread(_activate, registry, settings, version, measure)
    except ModelNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except ModelUnavailableError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"active": registry.active(), "speed": speed}


def _activate(
    registry: ModelRegistry, settings: Settings, version: str, measure: bool
) -> SpeedReport | None:
    previous = registry.active()
    speed = None
    if measure and version != previous:
        with registry.acquire(version) as candidate, registry.acquire(previous) as incumbent:
            incumbent_path = registry.path_of(previous)
            spec = speed_spec(settings, previous, incumbent_path)
            speed = measure_speed(version, candidate.engine, incumbent.engine, spec, settings.home)
    registry.activate(version)
    if speed is not None:
        logger.info("admin activated %s: %s", version, speed.describe())
        return speed
    recorded = registry.metrics_of(version).get("speed")
    return None if recorded is None else SpeedReport.model_validate(recorded)
