"""The calibration child: `python -m server.calibration.worker SPEC`, started by
`server.calibration.child` for admin jobs and for the embedded default build alike.

SPEC is a JSON file (`WorkerSpec`). The worker calibrates the spec's clips, saves the artifact at
`out` and, when the spec has a gate, first splits each clip into calibration frames and held-out
frames (the last `holdout` of them), then runs the quality gate on the saved artifact and writes
its report into the artifact's metrics.

It answers with typed events (`server.calibration.protocol`) on the stdout it was started with,
one per line; the process's own stdout then points at stderr, so nothing a library prints can
land among the events. Logging goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import IO, Any

import cv2
import torch

from ptq4vm_core.artifact import read_manifest, save_artifact, update_metrics
from ptq4vm_core.assets import weights_path
from ptq4vm_core.calib.calibrate import calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import PROFILES
from ptq4vm_core.calib.progress import ProgressEvent
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.runtime import default_threads
from ptq4vm_core.io.video import iter_frames, read_alpha_frames
from ptq4vm_core.model import load_rvm_from_onnx
from server.calibration.protocol import (
    ClipSpec,
    Failure,
    GateSpec,
    Progress,
    Result,
    WorkerSpec,
    encode_event,
)
from server.calibration.quality_gate import GateReport, GateThresholds, judge, mad_vs_reference
from server.calibration.speed import SpeedReport, SpeedSpec, measure_speed
from server.lifeline import exit_with_parent

logger = logging.getLogger(__name__)

MAX_FRAMES_PER_CLIP = 1000  # as the calibration set's loader: bounds the work per upload
MAX_HELD_OUT_FRAMES = 60  # per clip: enough for a drift estimate, quick to run
HELD_OUT_MAX_SIDE = 512  # held-out frames are fitted to this, the resolution of service
# Share of the overall progress the calibration itself takes when a gate follows it.
CALIBRATION_SHARE = 0.85
SPEED_START = 0.97  # the speed check's place in the overall progress (it takes seconds)


class Events:
    """The event pipe: a private copy of the stdout this process was started with."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @classmethod
    def take_stdout(cls) -> Events:
        """Keeps fd 1 for the events and points fd 1 (print, C libraries) at stderr."""
        sys.stdout.flush()
        stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        return cls(stream)

    def send(self, event: Progress | Result | Failure) -> None:
        self._stream.write(encode_event(event))
        self._stream.flush()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _fit(frame: Any, max_side: int) -> Any:
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def calibration_frames(
    clip: ClipSpec, index: int, work: Path, *, holdout: float, max_side: int
) -> tuple[Path, Path]:
    """Splits one clip into PNG frame directories: (calibration clip, held-out frames).

    The calibration clip is an evaluation-style directory (`com/`, and `pha/` when the clip
    has ground truth) with the first frames, fitted to the profile's `max_side` as the
    calibration set would fit them; the held-out directory has the last `holdout` of them."""
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


def run_gate(spec: WorkerSpec, gate: GateSpec, artifact: Path, held_out: list[Path],
             events: Events) -> GateReport:  # fmt: skip
    """The candidate at `artifact` and the active version, each against FP32 on `held_out`."""
    events.send(Progress(stage="gate", unit=FP32, step=0, total=2, fraction=CALIBRATION_SHARE))
    fp32 = load_engine(FP32, root=spec.home)
    candidate = load_engine(str(artifact), root=spec.home)
    candidate_mad, frames = mad_vs_reference(candidate, fp32, held_out)
    del candidate
    active_mad = 0.0
    if gate.active_version != FP32:
        events.send(Progress(stage="gate", unit=gate.active_version, step=1, total=2,
                             fraction=(1 + CALIBRATION_SHARE) / 2))  # fmt: skip
        active_mad, _ = mad_vs_reference(load_engine(gate.active, root=spec.home), fp32, held_out)
    thresholds = GateThresholds(max_mad=gate.max_mad, margin=gate.margin)
    report = judge(candidate_mad, gate.active_version, active_mad, frames, thresholds)
    update_metrics(
        artifact,
        {
            "MAD_vs_fp32_held_out": candidate_mad,
            "held_out_frames": frames,
            "gate": report.to_dict(),
        },
    )
    return report


def run_speed(spec: WorkerSpec, speed: SpeedSpec, artifact: Path, events: Events) -> SpeedReport:
    """The saved model timed against the one it would replace, on this CPU's engines."""
    events.send(Progress(stage="speed", unit=speed.incumbent_version, step=0, total=1,
                         fraction=SPEED_START))  # fmt: skip
    version = read_manifest(artifact).version_name
    candidate = load_engine(str(artifact), root=spec.home)
    incumbent = load_engine(speed.incumbent, root=spec.home)
    report = measure_speed(version, candidate, incumbent, speed, spec.home)
    update_metrics(artifact, {"speed": report.model_dump(mode="json")})
    return report


def run(spec: WorkerSpec, events: Events) -> Result:
    torch.set_num_threads(default_threads())  # the child's PTQ4VM_THREADS (CalibrationChild)
    prof = PROFILES[spec.profile]
    # The calibration's share of the progress: what follows it (gate, speed check) comes after.
    share = CALIBRATION_SHARE if spec.gate else SPEED_START if spec.speed else 1.0
    events.send(Progress(stage="prepare", step=0, total=len(spec.clips), fraction=0.0))
    held_out: list[Path] = []
    if spec.gate is None:
        calib_clips = [clip.video for clip in spec.clips]
    else:
        calib_clips = []
        for index, clip in enumerate(spec.clips):
            calib, held = calibration_frames(
                clip, index, spec.work, holdout=spec.gate.holdout, max_side=prof.max_side
            )
            calib_clips.append(calib)
            held_out.append(held)
    data = build_calibration_set(
        calib_clips, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side,
        seed=spec.seed,
    )  # fmt: skip

    def report(event: ProgressEvent) -> None:
        events.send(
            Progress(
                stage=event.stage,
                unit=event.unit,
                step=event.step,
                total=event.total,
                fraction=share * event.fraction,
                eta_s=_finite(event.eta_s),
                loss=_finite(event.loss),
            )
        )

    result = calibrate(
        load_rvm_from_onnx(weights_path(spec.home)), data, bits=spec.bits, method=spec.method,
        profile=spec.profile, progress=report, seed=spec.seed, target=spec.int8_target,
    )  # fmt: skip
    artifact = save_artifact(result, data, spec.out)
    gate = None if spec.gate is None else run_gate(spec, spec.gate, artifact, held_out, events)
    speed = None if spec.speed is None else run_speed(spec, spec.speed, artifact, events)
    return Result(version=read_manifest(artifact).version_name, gate=gate, speed=speed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.calibration.worker")
    parser.add_argument("spec", type=Path, help="the job's WorkerSpec as a JSON file")
    args = parser.parse_args(argv)
    events = Events.take_stdout()
    spec = WorkerSpec.model_validate_json(args.spec.read_text())
    if spec.parent is not None:
        exit_with_parent(spec.parent, spec.out)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        events.send(run(spec, events))
    except Exception as exc:
        logger.exception("calibration failed")
        events.send(Failure(message=f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
