"""`clients/examples/virtual_background.py` against a real server, on a short video."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.io.video import iter_frames, open_writer
from tests.server.conftest import RunningServer

EXAMPLE = Path(__file__).parents[2] / "clients" / "examples" / "virtual_background.py"


def test_virtual_background_writes_the_composite(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    video = tmp_path / "in.mp4"
    with open_writer(video, "rgb", width=176, height=144, fps=Fraction(15)) as writer:
        for frame in clip_rgb[:10]:
            writer.write(frame)
    spec = importlib.util.spec_from_file_location("virtual_background", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "out.mp4"
    example.main(
        ["--video", str(video), "--url", server.ws, "--background", "0,0,255", "--out", str(out)]
    )
    assert "10 frames (" in capsys.readouterr().out
    frames = list(iter_frames(out))
    assert len(frames) == 10
    # The top-left corner of the clip is background: it must now be (about) pure blue.
    corner = frames[-1][:10, :10].reshape(-1, 3).astype(int).mean(axis=0)
    assert corner[2] > 200
    assert corner[:2].max() < 60
