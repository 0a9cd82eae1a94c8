"""Is a model faster here than the one it would replace? The service never gets slower by itself.

Before the embedded default build (or an admin job asked to activate) replaces the model being
served, both are timed on this CPU's engines, at the shape of `SpeedSpec` (by default a
512x288 stream at ratio 1, alpha only, as streams ask), interleaved over rounds so that machine
noise hits both alike; the candidate is activated only where it is faster. An admin activation
(`POST /admin/models/{version}/activate`) overrides, and reports the same measurement.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.bench import bench_frames, compare_speed
from ptq4vm_core.engine import Engine
from ptq4vm_core.engine.cpu import cpu_class
from ptq4vm_core.io.video import iter_frames
from server.settings import Settings

logger = logging.getLogger(__name__)

SOURCE_FRAMES = 30  # sample-clip frames cycled through (content matters little; size does)


class SpeedSpec(BaseModel):
    """What to time a candidate against: the `incumbent` (a registry version's artifact
    directory, or "fp32") that `incumbent_version` names, at `width`x`height` and
    `downsample_ratio`, `frames` frames per round, median of `rounds` interleaved rounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    incumbent_version: str
    incumbent: str
    width: int = Field(default=512, ge=16, le=4096)
    height: int = Field(default=288, ge=16, le=4096)
    downsample_ratio: float = Field(default=1.0, gt=0, le=1)
    frames: int = Field(default=20, ge=1, le=1000)
    rounds: int = Field(default=3, ge=1, le=20)


def speed_spec(settings: Settings, incumbent_version: str, incumbent: str) -> SpeedSpec:
    """How a candidate is timed against `incumbent` (an artifact directory or "fp32"), from
    the PTQ4VM_SPEED_CHECK_* settings."""
    width, height = (int(v) for v in settings.speed_check_size.split("x"))
    return SpeedSpec(
        incumbent_version=incumbent_version,
        incumbent=incumbent,
        width=width,
        height=height,
        downsample_ratio=settings.speed_check_ratio,
        frames=settings.speed_check_frames,
        rounds=settings.speed_check_rounds,
    )


class SpeedReport(BaseModel):
    """Both models' frames per second on this CPU in the same rounds, and their ratio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str
    downsample_ratio: float
    cpu_class: str
    candidate_version: str
    candidate_engine: str
    candidate_fps: float = Field(gt=0)
    incumbent_version: str
    incumbent_engine: str
    incumbent_fps: float = Field(gt=0)
    # candidate fps / incumbent fps (> 1: the candidate is faster); computed from the figures.
    ratio: float = 0.0

    @model_validator(mode="after")
    def _ratio_from_the_figures(self) -> SpeedReport:
        object.__setattr__(self, "ratio", self.candidate_fps / self.incumbent_fps)
        return self

    @property
    def faster(self) -> bool:
        return self.candidate_fps > self.incumbent_fps

    def describe(self) -> str:
        """One line for the log: both figures and the ratio."""
        return (
            f"{self.candidate_version} ({self.candidate_engine}) {self.candidate_fps:.1f} fps vs "
            f"{self.incumbent_version} ({self.incumbent_engine}) {self.incumbent_fps:.1f} fps "
            f"at {self.size} ds {self.downsample_ratio:g} on this {self.cpu_class} CPU: "
            f"{self.ratio:.2f}x"
        )


def measure_speed(
    candidate_version: str,
    candidate: Engine,
    incumbent: Engine,
    spec: SpeedSpec,
    home: Path | None = None,
) -> SpeedReport:
    """Times `candidate` against `incumbent` (both loaded) as `spec` says."""
    source = list(islice(iter_frames(sample_clip_path(home)), SOURCE_FRAMES))
    frames = bench_frames(source, spec.width, spec.height, spec.frames)
    fps = compare_speed(
        {"candidate": candidate, "incumbent": incumbent},
        frames,
        spec.downsample_ratio,
        rounds=spec.rounds,
    )
    report = SpeedReport(
        size=f"{spec.width}x{spec.height}",
        downsample_ratio=spec.downsample_ratio,
        cpu_class=cpu_class(),
        candidate_version=candidate_version,
        candidate_engine=candidate.name,
        candidate_fps=fps["candidate"],
        incumbent_version=spec.incumbent_version,
        incumbent_engine=incumbent.name,
        incumbent_fps=fps["incumbent"],
    )
    logger.info("speed: %s", report.describe())
    return report
