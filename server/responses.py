"""The JSON bodies the HTTP routes answer with, as pydantic models (issue 19): FastAPI checks each
answer against its route's model and the OpenAPI schema describes them, so the schemathesis run
(tests/fuzz/test_openapi.py) checks real shapes.

The bodies are built by the objects that own the data (`Job.describe`, `Calibration.describe`,
`ModelRegistry.describe`, `DefaultModelBuilder.describe`); these models only state their shape.
Keys are those DESIGN 4.4 and docs/server.md document; a key that is sometimes absent (a
version's manifest fields) is optional here and its route drops unset keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.calibrations import CalibrationState
from server.default_model import BuildState
from server.jobs import Container, JobState, OutputKind


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
    """An admin calibration job (`server.calibrations.Calibration`); times are Unix seconds."""

    id: str
    bits: str
    method: str
    profile: str
    activate: bool
    clips: list[CalibrationClip]
    state: CalibrationState
    stage: str | None
    progress: float = Field(description="In [0, 1].")
    eta_s: float | None
    loss: float | None
    version: str | None
    activated: bool
    metrics: dict[str, Any] = Field(description="The quality gate's report.")
    error: str | None
    created: float
    started: float | None
    finished: float | None
