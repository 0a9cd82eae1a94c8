"""The JSON bodies the HTTP routes answer with, as pydantic models (issue 19): FastAPI checks each
answer against its route's model and the OpenAPI schema describes them, so the schemathesis run
(tests/fuzz/test_openapi.py) checks real shapes.

The bodies are built by the objects that own the data (`Job.describe`, `Calibration.describe`,
`ModelRegistry.describe`, `DefaultModelBuilder.describe`); these models only state their shape.
Keys are those DESIGN 4.4 and docs/server.md document; a key that is sometimes absent (a
version's manifest fields) is optional here and its route drops unset keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.calibration.default_build import BuildState
from server.calibration.manager import CalibrationState
from server.calibration.speed import SpeedReport
from server.jobs.manager import Container, JobState, OutputKind


class ErrorBody(BaseModel):
    """Every refusal (4xx) and server-side failure (5xx) answered by the service itself."""

    detail: str = Field(description="What was wrong, naming the value or limit, and the fix.")


class FieldError(BaseModel):
    """One problem FastAPI found in a request's parameters."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = Field(description='Where: e.g. `["body", "bits"]`.')
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """HTTP 422: `detail` lists the parameters FastAPI refused, or says (as text) which value
    the route refused and why."""

    detail: list[FieldError] | str


# Starlette answers a body that is not valid multipart/form-data with 400 before a route runs;
# the upload routes declare it, so their OpenAPI lists every status they answer.
MALFORMED_UPLOAD = "The body is not valid multipart/form-data."
BAD_ORIGIN = "The request's Origin is not allowed (PTQ4VM_ALLOWED_ORIGINS)."
BAD_PARAMETERS = "A parameter FastAPI refused; `detail` lists each one."
UPLOADS_BUSY = "Too many uploads are being received (PTQ4VM_MAX_UPLOADS); see Retry-After."


def errors(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for its error statuses: each with its body's model (InvalidRequest
    for 422, ErrorBody for the others) and what it means here."""
    return {
        status: {"model": InvalidRequest if status == 422 else ErrorBody, "description": text}
        for status, text in descriptions.items()
    }


class Health(BaseModel):
    status: str = Field(description="`ok` whenever the process answers.")


class DefaultBuild(BaseModel):
    """The embedded default model's background build (DESIGN 4.4)."""

    state: BuildState
    method: str
    profile: str
    version: str | None = Field(description="The version it registered, once done.")
    error: str | None
    seconds: float | None = Field(description="How long the build ran, once finished.")
    stage: str | None = Field(
        description="What it is doing (prepare, biq, flow, gac), `done` at the end; null "
        "until it runs."
    )
    progress: float | None = Field(
        ge=0, le=1, description="The fraction of the work done; null until it runs."
    )
    eta_s: float | None = Field(description="Seconds left, estimated; null while unknown.")
    int8_target: str = Field(
        description="The int8 kernels it is calibrated for: `vnni`, or `avx2` (saturation-safe "
        "weights) on a CPU without VNNI."
    )
    activated: bool | None = Field(
        description="Whether it replaced the served model (only where faster); null until done."
    )
    decision: str | None = Field(description="Which model serves after the build, and why.")
    speed: SpeedReport | None = Field(
        description="Both models timed on this CPU's engines in the same rounds; null until done."
    )


class Readiness(BaseModel):
    status: str = Field(description="`ready` (HTTP 200) or `not ready` (HTTP 503).")
    model: str = Field(description="The active version.")
    loaded: list[str] = Field(description="The versions whose engines are in memory.")
    sessions: int = Field(description="Streaming sessions attached to a connection.")
    default_model: DefaultBuild


class ModelVersion(BaseModel):
    """One registered version; `fp32` has no manifest fields, a version whose manifest cannot
    be read has `error` instead of them."""

    version: str
    active: bool
    loaded: bool
    bits: str | None = None
    method: str | None = None
    profile: str | None = None
    created: str | None = Field(None, description="ISO 8601, UTC.")
    metrics: dict[str, Any] | None = Field(None, description="The manifest's metrics.")
    error: str | None = None


class ModelList(BaseModel):
    active: str
    versions: list[ModelVersion]
    default_build: DefaultBuild


class AdminModelList(BaseModel):
    active: str
    versions: list[ModelVersion]


class ActiveModel(BaseModel):
    active: str
    speed: SpeedReport | None = Field(
        default=None,
        description="The activated version timed against the one it replaced, on this CPU's "
        "engines (null when it was already active).",
    )


class JobStatus(BaseModel):
    """A video job (DESIGN 4.4); times are Unix seconds."""

    id: str
    state: JobState
    progress: float | None = Field(description="In [0, 1]; null while the frame count is unknown.")
    frames_done: int
    frames_total: int | None
    output: OutputKind
    container: Container
    model: str | None = Field(description="The version that ran it, or the one asked for.")
    error: str | None
    created: float
    finished: float | None
    expires: float | None = Field(description="When the result is deleted.")
    result: str | None = Field(description="The result's path, once done.")


class CalibrationClip(BaseModel):
    """An uploaded clip as stored: its name as sent, the file it was stored as, its digest."""

    name: str
    file: str
    sha256: str
    bytes: int
    alpha: str | None = Field(description="The file of its ground-truth alpha, if sent.")


class CalibrationStatus(BaseModel):
    """An admin calibration job (`server.calibration.manager.Calibration`); times are Unix
    seconds."""

    id: str
    bits: str
    method: str
    profile: str
    activate: bool
    clips: list[CalibrationClip]
    int8_target: str = Field(description="The int8 kernels calibrated for: `vnni` or `avx2`.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The calibration options given (float_inputs, base, gac, ofa, "
        "synthetic_backgrounds, seed), as `ptq4vm calibrate` takes them.",
    )
    state: CalibrationState
    stage: str | None
    progress: float = Field(description="In [0, 1].")
    eta_s: float | None
    loss: float | None
    version: str | None
    activated: bool
    metrics: dict[str, Any] = Field(
        description="The quality gate's report; `speed` (the candidate timed against the "
        "active model) when the job was asked to activate."
    )
    error: str | None
    created: float
    started: float | None
    finished: float | None
