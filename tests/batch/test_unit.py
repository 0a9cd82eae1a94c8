"""One video's unit without Ray: RGBA output equals `ptq4vm matte`'s foreground and alpha, and
what a killed writer left behind is cleared before the video is redone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ptq4vm_core.batch.spec import BatchSpec, VideoTask
from ptq4vm_core.batch.unit import matte_video, remove_stale_partials
from ptq4vm_core.cli.main import app
from ptq4vm_core.engine import load_engine
from ptq4vm_core.io.video import iter_frames, iter_rgba_frames, read_alpha_frames
from tests.batch.conftest import write_clip


def test_rgba_frames_are_matte_foreground_and_alpha(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "v.mp4", 4, 7)
    spec = BatchSpec(model="fp32", output="rgba", container="png")
    task = VideoTask(0, clip, tmp_path / "out" / "v")
    counts: list[int] = []
    outcome = matte_video(load_engine("fp32"), task, spec, counts.append)
    assert (outcome.frames, counts) == (4, [1, 2, 3, 4])
    result = CliRunner().invoke(
        app,
        ["matte", str(clip), "--model", "fp32", "--fgr-out", str(tmp_path / "fgr"),
         "--alpha-out", str(tmp_path / "pha")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rgba = list(iter_rgba_frames(task.output))
    fgr = list(iter_frames(tmp_path / "fgr"))
    pha = list(read_alpha_frames(tmp_path / "pha"))
    assert len(rgba) == len(fgr) == len(pha) == 4
    for got, colour, alpha in zip(rgba, fgr, pha, strict=True):
        np.testing.assert_array_equal(got, np.dstack([colour, alpha]))


def test_stale_partials_of_this_output_only_are_removed(tmp_path: Path) -> None:
    stale_dir = tmp_path / ".clip.0123456789ab.partial"
    stale_file = tmp_path / ".clip.mp4.0123456789ab.partial.mp4"
    other = tmp_path / ".clip2.0123456789ab.partial"
    for path in (stale_dir, other):
        path.mkdir()
    stale_file.write_bytes(b"x")
    assert remove_stale_partials(tmp_path / "clip") == 1
    assert remove_stale_partials(tmp_path / "clip.mp4") == 1
    assert not stale_dir.exists()
    assert not stale_file.exists()
    assert other.exists()
