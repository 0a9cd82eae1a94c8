"""The calibration runner and its protocol: typed events validated as they are read, a real
worker child that fails with its own error, a child killed before it starts, and a child whose
stray prints cannot land among its events."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptq4vm_core.calib.gate import GateReport
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.quant.spec import Bits
from server.calibration.child import CalibrationChild, CalibrationError, follow
from server.calibration.protocol import (
    ClipSpec,
    Failure,
    Progress,
    Result,
    WorkerSpec,
    decode_event,
    encode_event,
)

REPORT = GateReport(
    passed=True,
    candidate_mad=2.5,
    active_version="fp32",
    active_mad=0.0,
    max_mad=10.0,
    margin=0.5,
    frames=12,
    reasons=(),
)


def spec_for(tmp_path: Path, clip: Path) -> WorkerSpec:
    return WorkerSpec(
        clips=[ClipSpec(video=clip)],
        bits=Bits.W8A8,
        method=Method.MINMAX,
        profile=Profile.FAST,
        out=tmp_path / "out",
        work=tmp_path / "work",
        home=tmp_path / "home",
        gate=None,
    )


def test_events_round_trip_typed() -> None:
    progress = Progress(stage="biq", unit="enc0", step=3, total=20, fraction=0.25, loss=0.01)
    lines = [
        encode_event(progress),
        "\n",
        encode_event(Result(version="ptq4vm-w8a8-x", gate=REPORT)),
    ]
    seen: list[Progress] = []
    outcome = follow(lines, seen.append)
    assert seen == [progress]
    assert isinstance(outcome, Result)
    assert outcome.gate == REPORT  # the gate's own dataclass again, not a dict
    assert isinstance(outcome.gate, GateReport)
    assert decode_event(encode_event(Failure(message="ValueError: no"))) == Failure(
        message="ValueError: no"
    )


@pytest.mark.parametrize(
    "line",
    [
        "INFO some library printed this\n",
        '{"event": "progress", "stage": "biq", "step": 1, "total": 2, "fraction": 1.5}\n',
        '{"event": "progress", "stage": "biq", "step": 1, "total": 2}\n',
        '{"event": "result"}\n',
        '{"event": "finished", "version": "v"}\n',
        '{"event": "progress", "stage": "biq", "step": 1, "total": 2, "fraction": 0.5, "x": 1}\n',
    ],
)
def test_a_line_that_is_not_an_event_is_refused(line: str) -> None:
    with pytest.raises(CalibrationError, match="not an event"):
        follow([line], lambda event: None)


def test_a_failing_child_reports_its_own_error(tmp_path: Path) -> None:
    """A real worker on a clip that does not exist: the error names the worker's exception."""
    child = CalibrationChild(spec_for(tmp_path, tmp_path / "missing.mp4"), tmp_path, threads=1,
                             nice=5)  # fmt: skip
    seen: list[Progress] = []
    with pytest.raises(CalibrationError, match=r"exited with 1: \w+Error: .*missing\.mp4"):
        child.run(seen.append)
    assert [e.stage for e in seen] == ["prepare"]
    assert child.pid is None
    assert "calibration failed" in (tmp_path / "worker.log").read_text()  # its log, on stderr


def test_killed_before_it_starts(tmp_path: Path) -> None:
    child = CalibrationChild(spec_for(tmp_path, tmp_path / "clip.mp4"), tmp_path, threads=1,
                             nice=5)  # fmt: skip
    child.kill()
    assert child.run(lambda event: None) is None
    assert not (tmp_path / "worker.log").exists()  # no child was started


def test_prints_in_the_child_go_to_its_log_not_the_pipe() -> None:
    code = (
        "import sys; from server.calibration.worker import Events; "
        "from server.calibration.protocol import Progress; "
        "events = Events.take_stdout(); print('noise from a library'); "
        "events.send(Progress(stage='prepare', step=0, total=1, fraction=0.0))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    seen: list[Progress] = []
    assert follow(proc.stdout.splitlines(keepends=True), seen.append) is None
    assert [e.stage for e in seen] == ["prepare"]
    assert "noise from a library" in proc.stderr


@pytest.mark.parametrize(("threads", "nice"), [(0, 10), (1, 20), (1, -1)])
def test_bad_child_settings_are_refused(tmp_path: Path, threads: int, nice: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        CalibrationChild(spec_for(tmp_path, tmp_path / "c.mp4"), tmp_path, threads=threads,
                         nice=nice)  # fmt: skip
