"""The child process of an admin recalibration: `python -m server.calibration_worker SPEC`.

SPEC is a JSON file (`WorkerSpec`). The worker lowers its CPU priority first, then:
prepares the clips (the first frames of each for calibration, the last `holdout` fraction
held out for the quality gate), calibrates, saves the artifact at `out` (a staging directory
inside the registry, which the server then registers with one rename), runs the quality gate
and writes its report into the artifact's metrics.

It talks to the server in JSON lines on stdout, one object per line:
`{"event": "progress", "stage", "unit", "step", "total", "fraction", "eta_s", "loss"}` and,
last, `{"event": "result", "version", "gate": {...}}`. Logging goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import cv2
from pydantic import BaseModel, ConfigDict, Field

from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.calib.progress import ProgressEvent
from ptq4vm_core.quant.spec import Bits
from server.lifeline import exit_with_parent

logger = logging.getLogger(__name__)

MAX_FRAMES_PER_CLIP = 1000  # as the calibration set's loader: bounds the work per upload
MAX_HELD_OUT_FRAMES = 60  # per clip: enough for a drift estimate, quick to run
HELD_OUT_MAX_SIDE = 512  # held-out frames are fitted to this, the resolution of service
# Share of the overall progress the calibration itself takes; the gate takes the rest.
CALIBRATION_SHARE = 0.85


class ClipSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    video: Path
    alpha: Path | None = None


class WorkerSpec(BaseModel):
    """What the server asks of one worker. `active` is the active version's artifact
    directory, or "fp32"; `work` a scratch directory for the prepared frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clips: list[ClipSpec] = Field(min_length=1)
    bits: Bits
    method: Method
    profile: Profile
    out: Path
    work: Path
    home: Path
    active_version: str
    active: str
    holdout: float = Field(gt=0, lt=1)
    max_mad: float = Field(gt=0)
    margin: float = Field(ge=0)
    nice: int = Field(ge=0, le=19)
    parent: int | None = None  # the server's pid: exit (removing `out`) once it is gone
    seed: int = 0


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _fit(frame: Any, max_side: int) -> Any:
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def prepare_clip(
    clip: ClipSpec, index: int, work: Path, *, holdout: float, max_side: int
) -> tuple[Path, Path]:
    """Splits one clip into PNG frame directories: (calibration clip, held-out frames).

    The calibration clip is an evaluation-style directory (`com/`, and `pha/` when the clip
    has ground truth) with the first frames, fitted to the profile's `max_side` as the
    calibration set would fit them; the held-out directory has the last `holdout` of them."""
    from ptq4vm_core.io.video import iter_frames, read_alpha_frames

    count = sum(
        1 for _, _ in zip(range(MAX_FRAMES_PER_CLIP), iter_frames(clip.video), strict=False)
    )
    held = max(1, math.floor(count * holdout))
    split = count - held
    if split < 1:
        raise ValueError(f"clip {index + 1} has {count} frame(s): too few to hold any out")
    calib, held_dir = work / f"clip{index}", work / f"held{index}"
    (calib / "com").mkdir(parents=True)
    held_dir.mkdir(parents=True)
    alphas = read_alpha_frames(clip.alpha) if clip.alpha is not None else None
    if alphas is not None:
        (calib / "pha").mkdir()
    first_held = count - min(held, MAX_HELD_OUT_FRAMES)
    for i, frame in zip(range(count), iter_frames(clip.video), strict=False):
        alpha = next(alphas, None) if alphas is not None and i < split else None
        if i < split:
            cv2.imwrite(str(calib / "com" / f"{i:05d}.png"), _fit(frame, max_side)[..., ::-1])
            if alphas is not None:
                if alpha is None:
                    raise ValueError(f"the alpha of clip {index + 1} has fewer frames than it")
                cv2.imwrite(str(calib / "pha" / f"{i:05d}.png"), _fit(alpha, max_side))
        elif i >= first_held:
            fitted = _fit(frame, HELD_OUT_MAX_SIDE)
            cv2.imwrite(str(held_dir / f"{i:05d}.png"), fitted[..., ::-1])
    return calib, held_dir


def run(spec: WorkerSpec) -> None:
    import torch

    from ptq4vm_core.artifact import save_artifact, update_metrics
    from ptq4vm_core.assets import weights_path
    from ptq4vm_core.calib.calibrate import calibrate
    from ptq4vm_core.calib.data import build_calibration_set
    from ptq4vm_core.calib.methods import PROFILES
    from ptq4vm_core.engine import FP32, load_engine
    from ptq4vm_core.model import load_rvm_from_onnx
    from server.gate import GateThresholds, judge, mad_vs_reference

    threads = os.environ.get("PTQ4VM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    prof = PROFILES[spec.profile]
    emit("progress", stage="prepare", unit="", step=0, total=len(spec.clips), fraction=0.0,
         eta_s=None, loss=None)  # fmt: skip
    calib_clips, held_out = [], []
    for index, clip in enumerate(spec.clips):
        calib, held = prepare_clip(
            clip, index, spec.work, holdout=spec.holdout, max_side=prof.max_side
        )
        calib_clips.append(calib)
        held_out.append(held)
    data = build_calibration_set(
        calib_clips, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side,
        seed=spec.seed,
    )  # fmt: skip

    def report(event: ProgressEvent) -> None:
        emit(
            "progress",
            stage=event.stage,
            unit=event.unit,
            step=event.step,
            total=event.total,
            fraction=CALIBRATION_SHARE * event.fraction,
            eta_s=_finite(event.eta_s),
            loss=_finite(event.loss),
        )

    result = calibrate(
        load_rvm_from_onnx(weights_path(spec.home)), data, bits=spec.bits, method=spec.method,
        profile=spec.profile, progress=report, seed=spec.seed,
    )  # fmt: skip
    manifest_path = save_artifact(result, data, spec.out)

    emit("progress", stage="gate", unit="fp32", step=0, total=2, fraction=CALIBRATION_SHARE,
         eta_s=None, loss=None)  # fmt: skip
    fp32 = load_engine(FP32, root=spec.home)
    candidate = load_engine(str(manifest_path), root=spec.home)
    candidate_mad, frames = mad_vs_reference(candidate, fp32, held_out)
    del candidate
    active_mad = 0.0
    if spec.active_version != FP32:
        emit("progress", stage="gate", unit=spec.active_version, step=1, total=2,
             fraction=(1 + CALIBRATION_SHARE) / 2, eta_s=None, loss=None)  # fmt: skip
        active_mad, _ = mad_vs_reference(load_engine(spec.active, root=spec.home), fp32, held_out)
    gate = judge(
        candidate_mad, spec.active_version, active_mad, frames,
        GateThresholds(max_mad=spec.max_mad, margin=spec.margin),
    )  # fmt: skip
    update_metrics(
        manifest_path,
        {
            "MAD_vs_fp32_held_out": candidate_mad,
            "held_out_frames": frames,
            "gate": gate.to_dict(),
        },
    )
    from ptq4vm_core.artifact import read_manifest

    emit("result", version=read_manifest(manifest_path).version_name, gate=gate.to_dict())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.calibration_worker")
    parser.add_argument("spec", type=Path, help="the job's WorkerSpec as a JSON file")
    args = parser.parse_args(argv)
    spec = WorkerSpec.model_validate_json(args.spec.read_text())
    os.nice(spec.nice)  # first, so that everything after runs behind the sessions
    if spec.parent is not None:
        exit_with_parent(spec.parent, spec.out)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        run(spec)
    except Exception as exc:
        logger.exception("calibration failed")
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
