"""One Settings object for the service, read from `PTQ4VM_*` environment variables.

Validators fail at start-up with a message naming the variable, never at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ptq4vm_core.batch import RAY_EXTRA_HINT, ray_available
from ptq4vm_core.calib.gate import GATE_HOLDOUT, GATE_MARGIN, GATE_MAX_MAD
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.engine.base import EngineKind
from ptq4vm_core.engine.runtime import default_threads
from ptq4vm_core.paths import cache_root

MiB = 1024 * 1024
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def _machine_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _bundled_web_client() -> Path | None:
    web = Path(__file__).resolve().parent.parent / "clients" / "web"
    return web if (web / "index.html").is_file() else None


class IceServer(BaseModel):
    """One STUN or TURN server for WebRTC peer connections (`PTQ4VM_ICE_SERVERS`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    """Every knob of the service; the env var is the field name upper-cased with `PTQ4VM_`."""

    model_config = SettingsConfigDict(env_prefix="PTQ4VM_", extra="ignore", frozen=True)

    # Network.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Cache root: weights, sample clip, model registry (`models/`) and job files (`jobs/`).
    home: Path = Field(default_factory=cache_root)
    # Model for sessions and requests that name none; None = the registry's active version.
    model: str | None = None
    # Runtime for every model (`ptq4vm serve --engine`): auto = the fastest measured here
    # (OpenVINO with static shapes where it runs, else ONNX Runtime); see docs/engine.md.
    engine: EngineKind = EngineKind.AUTO

    # Streaming sessions (DESIGN 4.3).
    max_sessions: PositiveInt = 16
    max_message_bytes: PositiveInt = 8 * MiB
    max_frame_side: PositiveInt = 4096
    idle_timeout_s: PositiveFloat = 60.0
    session_ttl_s: PositiveFloat = 30.0
    ping_interval_s: PositiveFloat = 20.0
    ping_timeout_s: PositiveFloat = 20.0
    # Hostile clients (docs/security.md): text (JSON control) messages are small; a client
    # address holds at most this many WebSocket connections (the forwarded address when the
    # peer is one of `trusted_proxies`); Origin allow-list of the handshake and of the
    # browser-facing routes (comma-separated; empty: the server's own origin; `*`: any).
    max_text_bytes: PositiveInt = 64 * 1024
    max_connections_per_client: PositiveInt = 8
    trusted_proxies: str = ""
    allowed_origins: str = ""

    # WebRTC (WHIP, DESIGN 4.6; docs/operations.md): the bearer token publishers send (unset:
    # none needed), the size of an SDP offer, how long ICE and DTLS may take, the frames a
    # second a publisher is matted at (more are discarded; 4x that ends it), and the ICE
    # servers (STUN/TURN) offered to peer connections: a JSON list of
    # {"urls": ..., "username": ..., "credential": ...}; none (host candidates) by default.
    whip_token: SecretStr | None = None
    whip_max_sdp_bytes: PositiveInt = 64 * 1024
    whip_connect_timeout_s: PositiveFloat = 10.0
    whip_max_fps: PositiveFloat = 60.0
    ice_servers: list[IceServer] = Field(default_factory=list)

    # Inference scheduling.
    infer_workers: PositiveInt = 1
    # Frames of different sessions (same model, size and ratio) run as one batch, up to this
    # many; 1 turns micro-batching off. See docs/server.md for the measurement behind it.
    max_batch: PositiveInt = 1
    # One batch-lane (video job) frame is run for every `batch_lane_share` realtime frames
    # when both are waiting, so jobs never starve live sessions nor starve themselves.
    batch_lane_share: PositiveInt = 4
    # OpenCV's threads per image operation (the frames' decode, conversion and PNG encode).
    # One: the engine's threads own the cores, and OpenCV's pool spreading a 5 ms decode over
    # both of them stalls the engine more than it saves (docs/server.md, "Serving efficiency").
    opencv_threads: PositiveInt = 1

    # REST and video jobs (DESIGN 4.4).
    max_image_bytes: PositiveInt = 16 * MiB
    max_upload_bytes: PositiveInt = 512 * MiB
    # Decoded size limits of every image and video that enters, checked from the header or
    # the container before any pixel is decoded (4096x2048 = 8 Mpx covers 4K UHD).
    max_pixels: PositiveInt = 4096 * 2048
    max_video_seconds: PositiveFloat = 600.0
    max_video_frames: PositiveInt = 18_000
    # Uploads (`/v1/matte`, `/v1/jobs`, `/admin/calibrations`) read at once; more: 503.
    max_uploads: PositiveInt = 4
    # Wall-clock limit of one video job (queued time not counted).
    max_job_seconds: PositiveFloat = 3600.0
    max_jobs: PositiveInt = 16
    job_workers: PositiveInt = 1
    job_ttl_s: PositiveFloat = 3600.0
    # CPU niceness of the job threads (decoding, encoding), so that sessions come first.
    job_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # Video jobs on this Ray cluster (its GCS HOST:PORT, or auto) instead of in this process;
    # every node mounts `home` at the same path. Needs the `ray` extra (docs/batch.md).
    ray_address: str | None = None

    # Registry: versions no session uses kept loaded (least recently used first out) besides
    # the active one and fp32, which always stay loaded.
    max_idle_models: Annotated[int, Field(ge=0)] = 1

    # Embedded default (DESIGN 4.4): build W8A8 on the sample clip when the registry is empty.
    build_default: bool = True
    default_method: Method = Method.PTQ4VM
    default_profile: Profile = Profile.STANDARD
    default_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # CPU threads of the build; default: half the cores, the rest stay with the sessions.
    default_threads: PositiveInt | None = None

    # Before a built model replaces the one served (the default build; an admin job asked to
    # activate), both are timed here at this size (WxH) and downsample ratio, frames per round,
    # median of interleaved rounds; the candidate is activated only where it is faster
    # (server/calibration/speed.py). 512x288 at ratio 1 is a conferencing stream's shape. Off:
    # activation follows the quality gate alone (and an admin activation measures only when asked).
    speed_check: bool = True
    speed_check_size: Annotated[str, Field(pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$")] = (
        "512x288"
    )
    speed_check_ratio: Annotated[float, Field(gt=0, le=1)] = 1.0
    speed_check_frames: Annotated[int, Field(ge=1, le=1000)] = 20
    speed_check_rounds: Annotated[int, Field(ge=1, le=20)] = 3

    # Admin (DESIGN 4.4): the bearer token of `/admin/*`; unset (or empty), those routes 404.
    admin_token: SecretStr | None = None
    # Recalibration jobs: upload limit of all clips together, niceness and CPU threads of the
    # calibration child (default threads: as the embedded default build), free space needed
    # under `home` before a job starts.
    max_calibration_bytes: PositiveInt = 1024 * MiB
    calibration_nice: Annotated[int, Field(ge=10, le=19)] = 10
    calibration_threads: PositiveInt | None = None
    min_free_bytes: Annotated[int, Field(ge=0)] = 1024 * MiB
    # Quality gate: a candidate passes when its MAD against FP32 (x1e3, on the held-out last
    # `gate_holdout` of each clip's frames) is at most `gate_max_mad` and at most the active
    # version's plus `gate_margin`.
    gate_max_mad: PositiveFloat = GATE_MAX_MAD
    gate_margin: Annotated[float, Field(ge=0)] = GATE_MARGIN
    gate_holdout: Annotated[float, Field(gt=0, lt=1)] = GATE_HOLDOUT

    # Static files served at `/`: by default the browser client (clients/web) when this is a
    # repository checkout that has it; unset (None) in an installed package without it.
    static_dir: Path | None = Field(default_factory=lambda: _bundled_web_client())

    @field_validator("home", "static_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("ray_address")
    @classmethod
    def _ray_installed(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not ray_available():
            raise ValueError(f"PTQ4VM_RAY_ADDRESS={value} is set, but {RAY_EXTRA_HINT}")
        return value

    @field_validator("admin_token")
    @classmethod
    def _empty_token_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(
                        f"PTQ4VM_TRUSTED_PROXIES: {part!r} is no IP address or CIDR network"
                    ) from None
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part and part != "*" and not re.fullmatch(r"https?://[^/\s]+/?", part):
                raise ValueError(
                    f"PTQ4VM_ALLOWED_ORIGINS: {part!r} is no origin (scheme://host[:port]) or *"
                )
        return value

    @field_validator("static_dir")
    @classmethod
    def _static_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"PTQ4VM_STATIC_DIR={value} is not a directory")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.infer_workers > 4 * _machine_cores():
            raise ValueError(
                f"PTQ4VM_INFER_WORKERS={self.infer_workers} is far above the "
                f"{_machine_cores()} cores of this machine; use at most the core count"
            )
        if self.ping_timeout_s >= self.idle_timeout_s:
            raise ValueError(
                f"PTQ4VM_PING_TIMEOUT_S ({self.ping_timeout_s}) must be below "
                f"PTQ4VM_IDLE_TIMEOUT_S ({self.idle_timeout_s})"
            )
        return self

    @property
    def engine_owns_cores(self) -> bool:
        """Whether the inference workers' engine threads take every core (the default: one
        worker, PTQ4VM_THREADS unset); then an engine call waits for the encodes to end."""
        return self.infer_workers * default_threads() >= _machine_cores()

    @property
    def build_threads(self) -> int:
        return self.default_threads or max(1, _machine_cores() // 2)

    @property
    def calibration_build_threads(self) -> int:
        return self.calibration_threads or self.build_threads

    @property
    def calibrations_dir(self) -> Path:
        return self.home / "calibrations"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"
