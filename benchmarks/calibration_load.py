"""Streaming latency while an admin recalibration runs (issue 7), against idle, in one run.

Starts `ptq4vm serve` with an admin token, streams --sessions sessions of the sample clip at
--size (JPEG in, PNG alpha out, lockstep) for --seconds while the server is idle, then uploads
the sample clip to `POST /admin/calibrations` (--method/--profile/--bits, not activated),
waits until the job's child process is past its setup and streams again for --seconds while
it calibrates, then cancels the job. Reports fps and latency p50/p99 for both phases and the
p99 ratio (goal: <= 2). The calibration runs niced in its own process with
`PTQ4VM_CALIBRATION_THREADS` threads (default: half the cores), as the server starts it.

Usage: python benchmarks/calibration_load.py [--model fp32] [--profile standard]
       [--seconds 60] [--out docs/benchmarks/calibration-load]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.cli.common import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import RunResult, Server, encoded_frames, run, run_header, write_report

TOKEN = "calibration-load-benchmark"


def start_calibration(base: str, args: argparse.Namespace) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with sample_clip_path().open("rb") as clip:
        response = httpx.post(
            f"{base}/admin/calibrations",
            headers=headers,
            files={"clips": ("sample.mp4", clip, "video/mp4")},
            data={"bits": args.bits, "method": args.method, "profile": args.profile},
            timeout=60,
        )
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    job_id = str(job["id"])
    deadline = time.monotonic() + 300
    while True:  # past the child's start-up (imports, data) into the optimisation proper
        job = httpx.get(f"{base}/admin/calibrations/{job_id}", headers=headers).json()
        if job["state"] not in ("queued", "running"):
            raise RuntimeError(f"calibration ended before the measurement: {job}")
        if job["state"] == "running" and job.get("stage") not in (None, "start", "prepare"):
            return job_id
        if time.monotonic() > deadline:
            raise RuntimeError(f"calibration did not start in 300 s: {job}")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fp32")
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--method", default="ptq4vm")
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    size = parse_size(args.size)
    frames = encoded_frames(size)
    os.environ["PTQ4VM_ADMIN_TOKEN"] = TOKEN
    server = Server(args.model, 1, args.sessions)
    base = f"http://127.0.0.1:{server.port}"
    phases: dict[str, RunResult] = {}
    stage = None
    try:
        stream = (server.url, frames, size, args.model, args.sessions, args.seconds, 1, 1)
        phases["idle"] = asyncio.run(run(*stream))
        print(json.dumps({"idle": asdict(phases["idle"])}), flush=True)
        job_id = start_calibration(base, args)
        phases["calibrating"] = asyncio.run(run(*stream))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        job = httpx.get(f"{base}/admin/calibrations/{job_id}", headers=headers).json()
        stage = job.get("stage")
        if job["state"] != "running":
            raise RuntimeError(f"the calibration was not running throughout: {job}")
        print(json.dumps({"calibrating": asdict(phases["calibrating"]), "stage": stage}))
        httpx.delete(f"{base}/admin/calibrations/{job_id}", headers=headers)
    finally:
        server.stop()
    ratio = phases["calibrating"].ms_p99 / phases["idle"].ms_p99
    report = {
        **run_header("calibration_load.py"),
        "model": args.model,
        "size": args.size,
        "calibration": {"bits": args.bits, "method": args.method, "profile": args.profile},
        "stage_at_end": stage,
        "phases": {name: asdict(result) for name, result in phases.items()},
        "p99_ratio": ratio,
    }
    print(json.dumps({"p99_ratio": ratio}), flush=True)
    if args.out:
        write(args.out, report)


def write(out: Path, report: dict[str, Any]) -> None:
    """The report and its markdown."""
    cal = report["calibration"]
    lines = [
        f"# Streaming while a recalibration runs ({report['model']}, {report['size']})",
        "",
        f"`{report['command']}` on {report['machine']} ({report['date']}). Calibration: "
        f"{cal['method']} {cal['bits']}, {cal['profile']} profile, on the sample clip, in the "
        "server's niced child process; measured while it was running (last stage seen: "
        f"{report['stage_at_end']}).",
        "",
        "| phase | sessions | fps | p50 ms | p99 ms | drop rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["phases"].items():
        lines.append(
            f"| {name} | {r['sessions']} | {r['fps']:.1f} | {r['ms_p50']:.0f} | "
            f"{r['ms_p99']:.0f} | {r['drop_rate']:.1%} |"
        )
    lines.append(f"\np99 while calibrating / idle: {report['p99_ratio']:.2f}x (goal: <= 2x).")
    write_report(out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
