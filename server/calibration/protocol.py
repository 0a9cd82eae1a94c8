"""What the server and a calibration child (`server.calibration.worker`) say to each other.

The server writes a `WorkerSpec` as a JSON file and starts the child on it; the child answers
with events on its stdout pipe, one JSON object per line: `Progress` any number of times, then
`Result` or `Failure`. Both ends use these models, and the server validates every line it reads
(`decode_event`), so a field renamed on one side is an error at once, not a key nobody reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ptq4vm_core.calib.gate import GateReport
from ptq4vm_core.calib.methods import Base, Method, Profile
from ptq4vm_core.calib.pipeline import CalibrationRequest, ClipSource, float_inputs_named
from ptq4vm_core.quant.spec import Bits, Int8Target
from server.calibration.speed import SpeedReport, SpeedSpec


class ClipSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    video: Path
    alpha: Path | None = None

    def request_clip(self) -> ClipSource:
        return ClipSource(self.video, self.alpha)


class GateSpec(BaseModel):
    """The quality gate of an admin job: the last `holdout` of each clip's frames are held out
    and the candidate is judged on them against FP32 and the active version
    (`ptq4vm_core.calib.gate`).
    `active` is the active version's artifact directory, or "fp32"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    active_version: str
    active: str
    holdout: float = Field(gt=0, lt=1)
    max_mad: float = Field(gt=0)
    margin: float = Field(ge=0)


# Synthetic backgrounds an admin job may ask for (each is a clip built from the sample clip).
MAX_SYNTHETIC_BACKGROUNDS = 8


class CalibrationOptions(BaseModel):
    """The calibration options an admin job shares with `ptq4vm calibrate` beyond bits, method,
    profile and int8 target (same names, same meaning: `calib.pipeline.CalibrationRequest`).
    `ptq4vm calibrate`'s --device and --biq-from have no admin field: the server calibrates on
    its CPU, and takes no server path from a client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    float_inputs: str = ""
    base: Base = Base.QDROP
    gac: bool = True
    ofa: bool = True
    synthetic_backgrounds: int = Field(default=0, ge=0, le=MAX_SYNTHETIC_BACKGROUNDS)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class WorkerSpec(BaseModel):
    """What the server asks of one child: calibrate `clips` at `bits` with `method` and
    `profile`, save the artifact at `out` (a staging directory inside the registry, which the
    server registers with one rename). With a `gate`, the clips are split into calibration and
    held-out frames under `work` (a scratch directory) and the gate's report is written into the
    artifact's metrics; without one (the embedded default build), the whole clips calibrate.
    `int8_target` is the int8 kernels the model is calibrated for; with `speed`, the saved
    model is timed against the model it would replace (`server.calibration.speed`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clips: list[ClipSpec] = Field(min_length=1)
    bits: Bits
    method: Method
    profile: Profile
    out: Path
    work: Path
    home: Path
    gate: GateSpec | None
    parent: int | None = None  # the server's pid: exit (removing `out`) once it is gone
    seed: int = 0
    int8_target: Int8Target = Int8Target.VNNI
    speed: SpeedSpec | None = None
    # The calibration options the CLI has too (`calib.pipeline.CalibrationRequest`).
    float_inputs: tuple[str, ...] = ()
    base: Base = Base.QDROP
    gac: bool = True
    ofa: bool = True
    synthetic_backgrounds: int = Field(default=0, ge=0, le=MAX_SYNTHETIC_BACKGROUNDS)

    def request(self) -> CalibrationRequest:
        """The core pipeline's request for these clips and options (CPU; no --biq-from: the
        server takes no path from a client)."""
        return CalibrationRequest(
            clips=tuple(c.request_clip() for c in self.clips),
            bits=self.bits,
            method=self.method,
            profile=self.profile,
            seed=self.seed,
            int8_target=self.int8_target,
            float_inputs=self.float_inputs,
            base=self.base,
            gac=self.gac,
            ofa=self.ofa,
            synthetic_backgrounds=self.synthetic_backgrounds,
            holdout=None if self.gate is None else self.gate.holdout,
        )


def worker_options(options: CalibrationOptions) -> dict[str, Any]:
    """`WorkerSpec` fields from an admin job's options."""
    return {
        "float_inputs": float_inputs_named(options.float_inputs),
        "base": options.base,
        "gac": options.gac,
        "ofa": options.ofa,
        "synthetic_backgrounds": options.synthetic_backgrounds,
        "seed": options.seed,
    }


def check_options(
    bits: Bits, method: Method, profile: Profile, target: Int8Target, options: CalibrationOptions
) -> None:
    """ValueError, naming the option, where the core pipeline would refuse these options."""
    CalibrationRequest(
        clips=(), bits=bits, method=method, profile=profile, seed=options.seed,
        int8_target=target, float_inputs=float_inputs_named(options.float_inputs),
        base=options.base, gac=options.gac, ofa=options.ofa,
        synthetic_backgrounds=options.synthetic_backgrounds,
    ).check_options()  # fmt: skip


class Progress(BaseModel):
    """Where the child is: `stage` (e.g. "prepare", "biq", "gate"), `unit` (the closure or
    version being worked on, or ""), `step`/`total` within the unit, `fraction` of the whole
    job in [0, 1], its ETA in seconds and the latest loss (when optimising)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["progress"] = "progress"
    stage: str
    unit: str = ""
    step: int = Field(ge=0)
    total: int = Field(ge=0)
    fraction: float = Field(ge=0, le=1)
    eta_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    loss: float | None = Field(default=None, allow_inf_nan=False)


class Result(BaseModel):
    """The child's artifact is complete at the spec's `out`: its version name, the quality
    gate's report when the spec asked for a gate, and the speed report when it asked for one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["result"] = "result"
    version: str
    gate: GateReport | None = None
    speed: SpeedReport | None = None


class Failure(BaseModel):
    """The child gave up: `message` is the exception, `Type: text`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["failure"] = "failure"
    message: str


Event = Annotated[Progress | Result | Failure, Field(discriminator="event")]
_EVENT = TypeAdapter[Progress | Result | Failure](Event)


def encode_event(event: Progress | Result | Failure) -> str:
    """One line of the pipe, newline included."""
    return event.model_dump_json() + "\n"


def decode_event(line: str | bytes) -> Progress | Result | Failure:
    """The event on one line of the pipe; pydantic.ValidationError for anything else."""
    return _EVENT.validate_json(line)
