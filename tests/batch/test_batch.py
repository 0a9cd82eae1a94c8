"""`ptq4vm batch` on a real two-node Ray cluster: outputs equal `ptq4vm matte`'s frame for
frame, a killed worker's video is redone elsewhere identically, re-runs resume, and a bad
input fails alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ptq4vm_core.batch.events import BatchEvent, EventKind
from ptq4vm_core.batch.manifest import Manifest, VideoStatus

pytest.importorskip("ray")

from ptq4vm_core.batch.runner import BatchError, RayOptions, run_batch
from ptq4vm_core.batch.spec import BatchSpec, plan
from ptq4vm_core.cli.main import app
from ptq4vm_core.io.video import iter_frames, read_alpha_frames
from tests.batch.conftest import copy_tree

cli = CliRunner()
PTQ4VM = Path(sys.executable).with_name("ptq4vm")


def matte_reference(clip: Path, out: Path, *extra: str) -> Path:
    """What `ptq4vm matte` writes for `clip` (the default engine, fp32)."""
    result = cli.invoke(app, ["matte", str(clip), "--model", "fp32", *extra])
    assert result.exit_code == 0, result.output
    return out


def assert_same_alpha(batch: Path, reference: Path) -> None:
    ours, theirs = sorted(batch.glob("*.png")), sorted(reference.glob("*.png"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for mine, expected in zip(read_alpha_frames(batch), read_alpha_frames(reference), strict=True):
        np.testing.assert_array_equal(mine, expected)


def no_partials(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir() if ".partial" in p.name]
    assert not leftovers, leftovers


def test_three_clips_equal_matte_frame_for_frame(
    ray_cluster: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    inputs = [clips["a"], clips["b"], clips["c"]]
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# two videos and a frame directory\n{clips['a']}\n{clips['b']}\n")
    proc = subprocess.run(
        [str(PTQ4VM), "batch", str(listing), str(clips["c"]), "--out", str(out),
         "--model", "fp32", "--ray-address", ray_cluster, "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["event"] == "start"
    assert lines[-1] == {"event": "finish", "frames_done": 19, "frames_total": 19}
    assert sorted(e["input"] for e in lines if e["event"] == "done") == sorted(map(str, inputs))

    manifest = json.loads((out / "batch.json").read_text())
    assert manifest["counts"] == {"pending": 0, "running": 0, "done": 3, "failed": 0}
    for video in manifest["videos"]:
        assert video["error"] is None
        assert video["frames"] == video["frames_total"]
        assert video["fps"] > 0
    nodes = {video["actor"] for video in manifest["videos"]}
    assert len(nodes) >= 1
    for name, clip in zip("abc", inputs, strict=True):
        reference = matte_reference(
            clip, tmp_path / f"ref-{name}", "--alpha-out", str(tmp_path / f"ref-{name}")
        )
        assert_same_alpha(out / name, reference)
    no_partials(out)


def test_composite_video_equals_matte(
    ray_client: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    spec = BatchSpec(model="fp32", output="composite", background="#2040ff")
    out = tmp_path / "out"
    report = run_batch(plan([clips["a"]], out, spec), spec, out, RayOptions(address=ray_client))
    assert report.ok, report.manifest.to_json()
    reference = tmp_path / "ref.mp4"
    matte_reference(
        clips["a"], reference, "--composite-out", str(reference), "--background", "#2040ff"
    )
    for mine, expected in zip(iter_frames(out / "a.mp4"), iter_frames(reference), strict=True):
        np.testing.assert_array_equal(mine, expected)


def test_killed_worker_video_redone_elsewhere_identically(
    ray_client: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    spec = BatchSpec(model="fp32")
    out = tmp_path / "out"
    tasks = plan([clips["long"], clips["b"]], out, spec)
    killed: list[int] = []

    def kill_mid_video(event: BatchEvent) -> None:
        record = event.record
        mine = record is not None and record.input == str(clips["long"])
        if event.kind is EventKind.FRAMES and mine and not killed and event.pid is not None:
            os.kill(event.pid, signal.SIGKILL)
            killed.append(event.pid)

    events: list[BatchEvent] = []

    def observe(event: BatchEvent) -> None:
        events.append(event)
        kill_mid_video(event)

    options = RayOptions(address=ray_client, actors=2, progress_every_s=0.0)
    report = run_batch(tasks, spec, out, options, observe)

    assert killed, "the long video never reported progress"
    assert report.actor_deaths == 1
    assert report.ok, report.manifest.to_json()
    record = report.manifest.videos[str(clips["long"])]
    assert record.attempts == 2
    assert [e.kind for e in events if e.record is record].count(EventKind.RETRY) == 1
    redone_on = [e.pid for e in events if e.kind is EventKind.STARTED and e.record is record]
    assert redone_on[0] == killed[0]
    assert redone_on[-1] != killed[0], "the video must be redone on another actor"
    assert events[-1].frames_done == events[-1].frames_total == 46
    reference = tmp_path / "ref"
    matte_reference(clips["long"], reference, "--alpha-out", str(reference))
    assert_same_alpha(out / "long", reference)
    no_partials(out)


def test_rerun_resumes(ray_client: str, clips: dict[str, Path], tmp_path: Path) -> None:
    spec = BatchSpec(model="fp32")
    out = tmp_path / "out"
    tasks = plan([clips["a"], clips["c"]], out, spec)
    options = RayOptions(address=ray_client, actors=1)
    assert run_batch(tasks, spec, out, options).ok
    stamps = {p: p.stat().st_mtime_ns for p in (out / "a", out / "c")}

    events: list[BatchEvent] = []
    again = run_batch(tasks, spec, out, options, events.append)
    assert again.ok
    assert [e.kind for e in events] == [EventKind.START, EventKind.SKIPPED, EventKind.SKIPPED,
                                        EventKind.FINISH]  # fmt: skip
    assert again.actors == [], "nothing to do starts no actor"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # An interrupted run (a video left running) and a deleted output are redone; only those.
    manifest = Manifest.load(out / "batch.json")
    assert manifest is not None
    manifest.videos[str(clips["a"])].status = VideoStatus.RUNNING
    manifest.save()
    events.clear()
    assert run_batch(tasks, spec, out, options, events.append).ok
    started = [e.record.input for e in events if e.kind is EventKind.STARTED and e.record]
    assert started == [str(clips["a"])]
    assert (out / "c").stat().st_mtime_ns == stamps[out / "c"]

    # Other settings are other pixels: everything is redone.
    other = BatchSpec(model="fp32", downsample=0.5)
    events.clear()
    assert run_batch(plan([clips["a"], clips["c"]], out, other), other, out, options,
                     events.append).ok  # fmt: skip
    assert sum(e.kind is EventKind.STARTED for e in events) == 2


def test_bad_input_fails_alone(ray_client: str, clips: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is no video\n" * 64)
    # Frames that start well and break at the third: the actor's unit fails mid-video.
    broken = copy_tree(clips["c"], tmp_path / "broken")
    (broken / "0002.png").write_bytes(b"no png")
    out = tmp_path / "out"
    result = cli.invoke(
        app,
        ["batch", str(garbage), str(clips["b"]), str(tmp_path / "missing.mp4"), str(broken),
         "--out", str(out), "--model", "fp32", "--ray-address", ray_client, "--json"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    manifest = json.loads((out / "batch.json").read_text())
    by_name = {Path(v["input"]).name: v for v in manifest["videos"]}
    assert by_name["b.mp4"]["status"] == "done"
    assert by_name["b.mp4"]["frames"] == 6
    assert by_name["garbage.mp4"]["status"] == "failed"
    assert "cannot decode video" in by_name["garbage.mp4"]["error"]
    assert by_name["missing.mp4"]["status"] == "failed"
    assert "not found" in by_name["missing.mp4"]["error"]
    assert by_name["broken"]["status"] == "failed"
    assert "cannot decode image" in by_name["broken"]["error"]
    assert by_name["broken"]["attempts"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["b", "batch.json"]


def test_a_model_no_actor_can_load_stops_the_batch(
    ray_client: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "not-an-artifact"
    broken.mkdir()
    spec = BatchSpec(model=str(broken))
    out = tmp_path / "out"
    with pytest.raises(BatchError, match="could not load model"):
        run_batch(plan([clips["b"]], out, spec), spec, out, RayOptions(address=ray_client))
    manifest = Manifest.load(out / "batch.json")
    assert manifest is not None
    assert manifest.videos[str(clips["b"])].status is VideoStatus.PENDING
