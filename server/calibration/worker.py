"""The calibration child: `python -m server.calibration.worker SPEC`, started by
`server.calibration.child` for admin jobs and for the embedded default build alike.

SPEC is a JSON file (`WorkerSpec`). The worker runs the core's calibration pipeline
(`calib.pipeline`, as `ptq4vm calibrate` does) on the spec's clips, saving the artifact at `out`;
with a gate, each clip's last `holdout` of frames is held out and the quality gate runs on them
(its report goes into the artifact's metrics); with `speed`, the speed check follows.

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
from typing import IO

from ptq4vm_core.artifact import read_manifest, update_metrics
from ptq4vm_core.calib.gate import GateReport, GateThresholds
from ptq4vm_core.calib.pipeline import run_calibration, run_gate
from ptq4vm_core.calib.progress import ProgressEvent
from ptq4vm_core.engine import FP32, load_engine
from server.calibration.protocol import (
    Failure,
    GateSpec,
    Progress,
    Result,
    WorkerSpec,
    encode_event,
)
from server.calibration.speed import SpeedReport, SpeedSpec, measure_speed
from server.lifeline import exit_with_parent

logger = logging.getLogger(__name__)

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


def run_gate_for(spec: WorkerSpec, gate: GateSpec, artifact: Path, held_out: list[Path],
                 events: Events) -> GateReport:  # fmt: skip
    """The core's quality gate (`calib.pipeline.run_gate`) against the active version."""
    events.send(Progress(stage="gate", unit=FP32, step=0, total=2, fraction=CALIBRATION_SHARE))
    thresholds = GateThresholds(max_mad=gate.max_mad, margin=gate.margin)
    return run_gate(
        artifact, held_out, thresholds, active=gate.active, active_version=gate.active_version,
        home=spec.home,
    )  # fmt: skip


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
    # The calibration's share of the progress: what follows it (gate, speed check) comes after.
    share = CALIBRATION_SHARE if spec.gate else SPEED_START if spec.speed else 1.0

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

    made = run_calibration(
        spec.request(), spec.out, work=spec.work, home=spec.home, progress=report
    )
    artifact = made.artifact
    gate = None
    if spec.gate is not None:
        gate = run_gate_for(spec, spec.gate, artifact, made.held_out, events)
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
