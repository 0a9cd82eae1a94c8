"""The quality gate of a calibration (DESIGN 4.4; the admin recalibration's, and `ptq4vm
calibrate --holdout`'s): a candidate is compared with FP32 on frames held out from calibration,
and with the active (or named) version on the same frames.

Uploaded clips have no ground truth, so the measure is the drift from the FP32 model: MAD
(x1e3, RVM's scale) between the candidate's 8-bit alpha and FP32's. The candidate passes when
that drift is at most `max_mad`, and at most the active version's drift plus `margin` (no
second condition when FP32 itself is active: it is the reference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptq4vm_core.engine import FP32, Engine
from ptq4vm_core.io.compose import to_uint8
from ptq4vm_core.io.metrics import SequenceMetrics
from ptq4vm_core.io.video import iter_frames, probe
from ptq4vm_core.pipeline import matte_frames, resolve_downsample_ratio

# The defaults of both the server (PTQ4VM_GATE_*) and `ptq4vm calibrate --holdout`.
GATE_MAX_MAD = 10.0
GATE_MARGIN = 1.0
GATE_HOLDOUT = 0.2


@dataclass(frozen=True)
class GateThresholds:
    """The limits, and what a user sets them with (a setting, a CLI option), for the reasons."""

    max_mad: float
    margin: float
    max_mad_name: str = "PTQ4VM_GATE_MAX_MAD"
    margin_name: str = "PTQ4VM_GATE_MARGIN"


@dataclass(frozen=True)
class GateReport:
    """`candidate_mad` / `active_mad`: MAD x1e3 against FP32 over `frames` held-out frames."""

    passed: bool
    candidate_mad: float
    active_version: str
    active_mad: float
    max_mad: float
    margin: float
    frames: int
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def _alpha8(pha: Any) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return to_uint8(np.asarray(pha[0]))


def mad_vs_reference(engine: Engine, reference: Engine, clips: list[Path]) -> tuple[float, int]:
    """(MAD x1e3 between `engine` and `reference` over all frames of `clips`, frame count).
    Each clip (a video or a frame directory) runs as one stream, at RVM's ratio for its size."""
    total, frames = 0.0, 0
    for clip in clips:
        info = probe(clip)
        ratio = resolve_downsample_ratio(None, info.width, info.height)
        drift = SequenceMetrics(("MAD",))
        count = 0
        ref_frames = matte_frames(reference, iter_frames(clip), ratio)
        for out, ref in zip(
            matte_frames(engine, iter_frames(clip), ratio), ref_frames, strict=True
        ):
            drift.update(_alpha8(out.pha), _alpha8(ref.pha))
            count += 1
        if count:
            total += drift.result()["MAD"] * count
            frames += count
    if frames == 0:
        raise ValueError("the quality gate has no held-out frames to evaluate")
    return total / frames, frames


def judge(
    candidate_mad: float,
    active_version: str,
    active_mad: float,
    frames: int,
    thresholds: GateThresholds,
) -> GateReport:
    """The verdict on a candidate from its drift and the active version's (same frames)."""
    reasons: list[str] = []
    if candidate_mad > thresholds.max_mad:
        reasons.append(
            f"MAD vs fp32 {candidate_mad:.3f} is above the limit {thresholds.max_mad:.3f} "
            f"({thresholds.max_mad_name})"
        )
    if active_version != FP32 and candidate_mad > active_mad + thresholds.margin:
        reasons.append(
            f"MAD vs fp32 {candidate_mad:.3f} is worse than the active version "
            f"{active_version}'s {active_mad:.3f} by more than {thresholds.margin:.3f} "
            f"({thresholds.margin_name})"
        )
    return GateReport(
        passed=not reasons,
        candidate_mad=candidate_mad,
        active_version=active_version,
        active_mad=active_mad,
        max_mad=thresholds.max_mad,
        margin=thresholds.margin,
        frames=frames,
        reasons=tuple(reasons),
    )
