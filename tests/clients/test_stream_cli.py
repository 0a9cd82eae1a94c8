"""`ptq4vm stream` end to end against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from typer.testing import CliRunner

from ptq4vm_core.cli.main import app as cli
from ptq4vm_core.io.video import iter_frames
from tests.server.conftest import RunningServer, png_dir

FRAMES = 12


def test_stream_writes_alpha_and_prints_stats(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
    tmp_path: Path,
) -> None:
    clip = png_dir(clip_rgb[:FRAMES], tmp_path / "clip")
    out = tmp_path / "alpha"
    result = CliRunner().invoke(
        cli, ["stream", str(clip), "--url", server.ws, "--alpha-out", str(out)]
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
