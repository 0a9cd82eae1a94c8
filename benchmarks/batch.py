"""Batch matting on Ray (issue 20): frames per second and videos per hour with 1 and 2 actors
on this machine, and where the time goes besides matting.

The videos are synthetic (a moving figure over a panning procedural background), written
here as H.264 MP4 at --size. Each configuration is a full `run_batch` on a fresh local Ray
instance with all the machine's cores (what `ptq4vm batch` without --ray-address does):
N actors of (cores / N) engine threads each, every video one unit. Beside them, the same
videos matted one after the other in this process with one engine on all cores (what
`ptq4vm matte` does for each), which has no Ray start, no actor start and no scheduling.

Per configuration: wall time, fps (all frames / wall), videos per hour, and the wall split
into Ray start, actor start (process and model load, until the first video can start),
matting (the actors' busy time, the mean over actors) and the rest (scheduling, the tail
where one actor idles while another finishes), each as a share of the wall time.

Usage: python benchmarks/batch.py [--videos 6] [--frames 40] [--size 512x288] [--model fp32]
           [--actors 1 2] [--out docs/benchmarks/batch]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ptq4vm_core.batch.events import BatchEvent, EventKind
from ptq4vm_core.batch.runner import RayOptions, run_batch
from ptq4vm_core.batch.spec import BatchSpec, VideoTask, plan
from ptq4vm_core.batch.unit import matte_video
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.engine import load_engine
from ptq4vm_core.io.evalclip import moving_background
from ptq4vm_core.io.video import open_writer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import run_header


def write_videos(root: Path, count: int, frames: int, width: int, height: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = root / f"video{index:02d}.mp4"
        with open_writer(path, "rgb", width=width, height=height, fps=Fraction(25)) as writer:
            for t in range(frames):
                frame = moving_background("stripes" if index % 2 else "blobs", t, width, height)
                x = int(width * (0.3 + 0.2 * np.sin((t + 7 * index) / 9.0)))
                body = slice(height // 4, height), slice(x, x + width // 5)
                frame[body] = (200 - 20 * index % 120, 150, 120)
                cy, cx, r = height // 5, x + width // 10, height // 8
                yy, xx = np.ogrid[:height, :width]
                frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (230, 190, 160)
                writer.write(frame)
        paths.append(path)
    return paths


def in_process(tasks: list[VideoTask], spec: BatchSpec) -> dict[str, Any]:
    """Every video in turn through one engine in this process (no Ray)."""
    started = time.monotonic()
    engine = load_engine(spec.model)
    load_s = time.monotonic() - started
    frames = sum(matte_video(engine, task, spec).frames for task in tasks)
    wall = time.monotonic() - started
    return {
        "config": "in process, no Ray",
        "actors": 0,
        "threads_per_actor": len(os.sched_getaffinity(0)),
        "frames": frames,
        "videos": len(tasks),
        "wall_s": round(wall, 2),
        "fps": round(frames / wall, 2),
        "videos_per_hour": round(len(tasks) / wall * 3600),
        "model_load_s": round(load_s, 2),
    }


def on_ray(tasks: list[VideoTask], spec: BatchSpec, actors: int, cores: int) -> dict[str, Any]:
    starts: dict[str, float] = {}
    busy: dict[str, float] = {}
    first_start: list[float] = []

    def observe(event: BatchEvent) -> None:
        record = event.record
        if record is None or record.actor is None:
            return
        if event.kind is EventKind.STARTED:
            starts[record.input] = time.monotonic()
            if not first_start:
                first_start.append(time.monotonic())
        elif event.kind is EventKind.DONE:
            elapsed = time.monotonic() - starts[record.input]
            busy[record.actor] = busy.get(record.actor, 0.0) + elapsed

    out = tasks[0].output.parent
    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, cores // actors)
    options = RayOptions(
        actors=actors, cpus_per_actor=cores / actors, threads=threads, local_cpus=cores
    )
    started = time.monotonic()
    report = run_batch(tasks, spec, out, options, observe)
    wall = time.monotonic() - started
    if not report.ok:
        raise RuntimeError(f"batch failed: {report.manifest.to_json()}")
    frames = sum(r.frames for r in report.manifest.videos.values())
    matting = sum(busy.values()) / actors
    ray_s = report.ray_seconds
    actor_start = first_start[0] - started - ray_s if first_start else 0.0
    rest = wall - ray_s - actor_start - matting
    return {
        "config": f"Ray, {actors} actor{'s' if actors > 1 else ''} x {threads} thread(s)",
        "actors": actors,
        "threads_per_actor": threads,
        "frames": frames,
        "videos": len(tasks),
        "wall_s": round(wall, 2),
        "fps": round(frames / wall, 2),
        "videos_per_hour": round(len(tasks) / wall * 3600),
        "fps_matting": round(frames / matting / actors, 2) if matting else None,
        "ray_start_s": round(ray_s, 2),
        "actor_start_s": round(actor_start, 2),
        "actor_load_s": [round(a.load_seconds, 2) for a in report.actors],
        "matting_s": round(matting, 2),
        "other_s": round(rest, 2),
        "share": {
            "ray_start": round(ray_s / wall, 3),
            "actor_start": round(actor_start / wall, 3),
            "matting": round(matting / wall, 3),
            "other": round(rest / wall, 3),
        },
        "overhead_share": round(1 - matting / wall, 3),
        "overhead_per_video_s": round((wall - matting) / len(tasks), 2),
    }


def render(result: dict[str, Any], out: Path) -> None:
    rows = result["rows"]
    lines = [
        f"# Batch matting on Ray ({result['videos']} videos x {result['frames_per_video']} "
        f"frames, {result['size']}, {result['model']})",
        "",
        f"`{result['command']}` on {result['machine']} ({result['date']}); load average "
        f"before the run: {result['load_before']} (the machine is shared: absolute numbers "
        "are context, compare rows of one run).",
        "",
        "| configuration | wall s | fps | videos/hour | Ray start | actor start | matting | "
        "other | overhead share | overhead per video s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        share = row.get("share")
        if share is None:
            lines.append(
                f"| {row['config']} | {row['wall_s']} | {row['fps']} | "
                f"{row['videos_per_hour']} | - | {row['model_load_s']} s load | - | - | - | - |"
            )
            continue
        lines.append(
            f"| {row['config']} | {row['wall_s']} | {row['fps']} | {row['videos_per_hour']} | "
            f"{share['ray_start']:.0%} | {share['actor_start']:.0%} | {share['matting']:.0%} | "
            f"{share['other']:.0%} | {row['overhead_share']:.0%} | "
            f"{row['overhead_per_video_s']} |"
        )
    lines += [
        "",
        "Shares are of the wall time. Ray start: `ray.init` of a local instance. Actor start: "
        "from then until the first video starts (worker processes, imports, model load; "
        "per-actor model loads: "
        + "; ".join(f"{r['actors']} actor(s): {r['actor_load_s']} s" for r in rows if "share" in r)
        + "). Matting: the actors' busy time per video unit (decode, matte, encode), mean over "
        "actors. Other: scheduling and the tail where an actor waits for the last video. "
        "Overhead = everything but matting; per video = that divided by the video count.",
        "",
    ]
    (out.with_suffix(".md")).write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["config"] for r in rows]
    ax.barh(names, [r["fps"] for r in rows], color="#4a7ab0")
    for y, row in enumerate(rows):
        ax.text(row["fps"], y, f" {row['fps']} fps, {row['videos_per_hour']} videos/h", va="center")
    ax.set_xlabel("frames per second over the whole run (wall)")
    ax.set_xlim(0, max(r["fps"] for r in rows) * 1.6)
    ax.set_title(
        f"{result['videos']} videos x {result['frames_per_video']} frames, {result['size']}"
    )
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--model", default="fp32")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/batch"))
    args = parser.parse_args()
    width, height = parse_size(args.size)
    cores = len(os.sched_getaffinity(0))
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="ptq4vm-batch-bench-") as tmp:
        root = Path(tmp)
        videos = write_videos(root, args.videos, args.frames, width, height)
        spec = BatchSpec(model=args.model)
        tasks = plan(videos, root / "out", spec)
        rows = [in_process(tasks, spec)]
        for actors in args.actors:
            rows.append(on_ray(tasks, spec, actors, cores))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        **run_header("batch.py"),
        "load_before": load_before,
        "videos": args.videos,
        "frames_per_video": args.frames,
        "size": args.size,
        "model": args.model,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    render(result, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
