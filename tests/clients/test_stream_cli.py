"""`ptq4vm stream` end to end against a real server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from ptq4vm_core.cli.main import app as cli
from ptq4vm_core.io.video import iter_frames
from tests.server.conftest import RunningServer, png_dir

FRAMES = 12


@pytest.mark.parametrize("camera", [False, True], ids=["frames", "camera"])
def test_stream_writes_alpha_and_prints_stats(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
    tmp_path: Path,
    camera: bool,
) -> None:
    """A frame directory, or (`--camera`) a live source read through OpenCV's capture as a
    camera is: no camera on the test machines, so an image sequence, which the capture opens
    the same way and which is lossless: the mattes are exactly the reference's either way."""
    clip = png_dir(clip_rgb[:FRAMES], tmp_path / "clip")
    out = tmp_path / "alpha"
    source = [str(clip / "%04d.png"), "--camera"] if camera else [str(clip)]
    result = CliRunner().invoke(
        cli, ["stream", *source, "--url", server.ws, "--alpha-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(sorted(out.glob("*.png"))) == FRAMES
    for i, alpha in enumerate(iter_frames(out)):
        np.testing.assert_array_equal(alpha[..., 0], fp32_reference[i], err_msg=f"frame {i}")
    summary = result.stdout
    assert f"{FRAMES} frames sent, {FRAMES} matted by fp32" in summary
    assert re.search(r"[\d.]+ fps, latency p50 [\d.]+ ms p99 [\d.]+ ms, dropped 0", summary)


def test_stream_reports_an_unreachable_server(tmp_path: Path, clip_rgb: list[NDArray[np.uint8]]):
    clip = png_dir(clip_rgb[:1], tmp_path / "clip")
    result = CliRunner().invoke(cli, ["stream", str(clip), "--url", "ws://127.0.0.1:9/v1/stream"])
    assert result.exit_code == 1
    assert "cannot open a stream" in result.output


def test_stream_camera_errors_are_clear(tmp_path: Path, clip_rgb: list[NDArray[np.uint8]]) -> None:
    url = ["--url", "ws://127.0.0.1:9/v1/stream"]
    result = CliRunner().invoke(cli, ["stream", "/dev/video97", "--camera", *url])
    assert result.exit_code == 2  # a user error, as every command's
    assert "cannot open camera '/dev/video97'" in result.output
    clip = png_dir(clip_rgb[:1], tmp_path / "clip")
    result = CliRunner().invoke(cli, ["stream", str(clip), "--seconds", "2", *url])
    assert result.exit_code == 2
    assert "--seconds is for --camera" in result.output


def test_ctrl_c_ends_a_camera_stream_cleanly(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], tmp_path: Path
) -> None:
    """The first Ctrl-C (SIGINT) ends the capture: the session stops, the summary is printed
    and the alpha of every frame sent is written (a camera has no end of its own)."""
    # Far longer than the wait below at any speed (a fast server mattes this clip at 50+ fps):
    # the Ctrl-C must land while frames still go, not after the capture ran out by itself.
    frames = clip_rgb * 8
    clip = png_dir(frames, tmp_path / "clip")
    out = tmp_path / "alpha"
    cmd = [sys.executable, "-m", "ptq4vm_core.cli", "stream", str(clip / "%04d.png"), "--camera"]
    cmd += ["--url", server.ws, "--alpha-out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    while "Ctrl-C ends it" not in (line := proc.stdout.readline()) and line:
        lines.append(line)
    assert line, "".join(lines)
    time.sleep(1.5)  # the session starts, frames go
    proc.send_signal(signal.SIGINT)
    output = line + proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    sent = int(re.search(r"(\d+) frames sent", output).group(1))  # type: ignore[union-attr]
    assert 0 < sent < len(frames), output
    assert len(sorted(out.glob("*.png"))) == sent
