"""Streaming benchmark (issue 6): 1, 2, 4, 8 concurrent sessions against a real `ptq4vm serve`.

Every session streams the sample clip, resized to --size and JPEG-encoded beforehand, as fast
as it is served: it keeps --inflight frames outstanding (1 = lockstep: send the next frame when
the matte of the last one arrives). Reported per session count: aggregate served fps,
per-session fps (min/max: fairness), latency p50/p99 (frame sent -> matte received) and the
drop rate; and, at one session, the served fps as a fraction of `ptq4vm bench` for the same
model and size, measured in the same run on the same machine.

With --max-batch 1 4 the server is started once per value and the runs are interleaved over
--rounds, so machine noise hits every configuration alike (medians are reported).

Usage: python benchmarks/stream.py [--model fp32] [--sessions 1 2 4 8] [--seconds 20]
       [--rounds 1] [--max-batch 1] [--out docs/benchmarks/stream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from websockets.asyncio.client import connect

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.engine.cpu import cpu_class, cpu_model
from ptq4vm_core.io.video import iter_frames


@dataclass(frozen=True)
class RunResult:
    max_batch: int
    sessions: int
    seconds: float
    fps: float
    session_fps_min: float
    session_fps_max: float
    ms_p50: float
    ms_p99: float
    sent: int
    matted: int
    dropped: int
    drop_rate: float


def encoded_frames(size: tuple[int, int], count: int = 60) -> list[bytes]:
    """The sample clip's first `count` frames at `size`, as JPEG (quality 90)."""
    frames = []
    for frame, _ in zip(iter_frames(sample_clip_path()), range(count), strict=False):
        resized = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        ok, data = cv2.imencode(".jpg", resized[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        frames.append(data.tobytes())
    return frames


class Server:
    """`ptq4vm serve` in a subprocess on a free port (`url`: its WebSocket, `http`: its base
    URL), serving `model` (None: the registry of `env`'s PTQ4VM_HOME); `env` adds settings."""

    def __init__(
        self,
        model: str | None,
        max_batch: int = 1,
        sessions: int = 16,
        engine: str = "auto",
        env: dict[str, str] | None = None,
    ) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        settings = {
            "PTQ4VM_BUILD_DEFAULT": "false",
            "PTQ4VM_MAX_BATCH": str(max_batch),
            "PTQ4VM_MAX_SESSIONS": str(max(16, sessions)),
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "ptq4vm_core.cli", "serve", "--port", str(self.port)]
        cmd += ["--engine", engine, *(["--model", model] if model else [])]
        # The log goes to a file: a pipe nobody reads would fill up and stall the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **settings}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"ptq4vm serve exited: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.http}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ptq4vm serve did not become ready in 120 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


async def session(
    url: str,
    frames: list[bytes],
    size: tuple[int, int],
    model: str | None,
    inflight: int,
    until: float,
    latencies: list[float],
    downsample: float | None = None,
    output: str = "alpha_png",
) -> tuple[int, int, int, float]:
    """Streams until `until`, mattes as `output`; returns (sent, matted, dropped, seconds)."""
    async with connect(url, compression=None, max_size=None) as ws:
        start = {
            "type": "start",
            "width": size[0],
            "height": size[1],
            "input": "jpeg",
            "output": output,
            "model": model,
            "downsample_ratio": downsample,
        }
        await ws.send(json.dumps(start))
        started = json.loads(await ws.recv())
        if started.get("type") != "started":
            raise RuntimeError(f"session refused: {started}")
        sent_at: dict[int, float] = {}
        sent = matted = dropped = 0
        began = time.monotonic()

        async def send() -> None:
            nonlocal sent
            sent_at[sent] = time.monotonic()
            await ws.send(frames[sent % len(frames)])
            sent += 1

        for _ in range(inflight):
            await send()
        while True:
            message = json.loads(await ws.recv())
            if message["type"] != "matte":
                raise RuntimeError(f"unexpected message: {message}")
            await ws.recv()  # the matte's bytes
            now = time.monotonic()
            latencies.append(now - sent_at.pop(message["seq"]))
            for seq in message["dropped"]:
                sent_at.pop(seq, None)
            matted += 1
            dropped += len(message["dropped"])
            if now >= until:
                break
            # Keep `inflight` frames outstanding: the dropped ones no longer are.
            while len(sent_at) < inflight:
                await send()
        seconds = time.monotonic() - began
        await ws.send(json.dumps({"type": "stop"}))
        async for reply in ws:  # mattes still in flight, then `stopped`
            if isinstance(reply, str) and json.loads(reply)["type"] == "stopped":
                break
        return sent, matted, dropped, seconds


async def run(
    url: str,
    frames: list[bytes],
    size: tuple[int, int],
    model: str | None,
    sessions: int,
    seconds: float,
    inflight: int,
    max_batch: int,
    downsample: float | None = None,
    output: str = "alpha_png",
) -> RunResult:
    latencies: list[float] = []
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        *(
            session(url, frames, size, model, inflight, until, latencies, downsample, output)
            for _ in range(sessions)
        )
    )
    sent = sum(r[0] for r in results)
    matted = sum(r[1] for r in results)
    dropped = sum(r[2] for r in results)
    wall = max(r[3] for r in results)
    per_session = [r[1] / r[3] for r in results]
    ms = np.asarray(latencies) * 1e3
    return RunResult(
        max_batch=max_batch,
        sessions=sessions,
        seconds=round(wall, 2),
        fps=round(matted / wall, 2),
        session_fps_min=round(min(per_session), 2),
        session_fps_max=round(max(per_session), 2),
        ms_p50=round(float(np.percentile(ms, 50)), 1),
        ms_p99=round(float(np.percentile(ms, 99)), 1),
        sent=sent,
        matted=matted,
        dropped=dropped,
        drop_rate=round(dropped / max(1, sent), 4),
    )


# Server settings a benchmark's result depends on; set in the environment, they are part of the
# command a report states.
TUNING = ("PTQ4VM_THREADS", "PTQ4VM_INFER_WORKERS", "PTQ4VM_MAX_BATCH")


def run_header(script: str) -> dict[str, str]:
    """Command (with the tuning variables set), date and machine of a benchmark run, as every
    report states them: the CPU's model and class (VNNI or AVX2-only, `engine.cpu`)."""
    env = "".join(f"{k}={os.environ[k]} " for k in TUNING if k in os.environ)
    return {
        "command": f"{env}python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()} ({cpu_class()}), {len(os.sched_getaffinity(0))} cores",
    }


def provenance(report: dict[str, Any]) -> str:
    """The line that says how, where and when a report was made."""
    return f"`{report['command']}` on {report['machine']} ({report['date']})."


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """`out`.json (the report) and `out`.md (its markdown), and the markdown on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def engine_bench(
    model: str,
    size: str,
    frames: int,
    downsample: float | None = None,
    *,
    alpha_only: bool = False,
    engine: str = "auto",
) -> dict[str, Any]:
    """`ptq4vm bench --json` of `model` in a subprocess (the server's PTQ4VM_THREADS apply)."""
    cmd = [
        sys.executable,
        "-m",
        "ptq4vm_core.cli",
        "bench",
        "--model",
        model,
        "--size",
        size,
        "--frames",
        str(frames),
        "--json",
        *(["--downsample", str(downsample)] if downsample is not None else []),
        *(["--alpha-only"] if alpha_only else []),
        "--engine",
        engine,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def median_results(runs: list[RunResult]) -> dict[str, Any]:
    row: dict[str, Any] = asdict(runs[0])
    for key in (
        "seconds",
        "fps",
        "session_fps_min",
        "session_fps_max",
        "ms_p50",
        "ms_p99",
        "drop_rate",
    ):
        row[key] = statistics.median(getattr(r, key) for r in runs)
    for key in ("sent", "matted", "dropped"):
        row[key] = sum(getattr(r, key) for r in runs)
    row["rounds"] = len(runs)
    return row


def write(out: Path, report: dict[str, Any]) -> None:
    """The report and its markdown."""
    lines = [
        f"# Streaming benchmark ({Path(report['model']).name}, {report['size']}, engine "
        f"{report.get('engine', 'auto')}, inflight {report['inflight']})",
        "",
        provenance(report),
        "",
        f"`ptq4vm bench`: {report['bench']['fps']:.1f} fps ({report['bench']['engine']}).",
        "",
        "| max_batch | sessions | fps | vs max_batch 1 | per-session fps (min-max) | p50 ms "
        "| p99 ms | drop rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    unbatched = {r["sessions"]: r["fps"] for r in report["results"] if r["max_batch"] == 1}
    for r in sorted(report["results"], key=lambda r: (r["sessions"], r["max_batch"])):
        base = unbatched.get(r["sessions"])
        versus = f"{r['fps'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['max_batch']} | {r['sessions']} | {r['fps']:.1f} | {versus} | "
            f"{r['session_fps_min']:.1f}-{r['session_fps_max']:.1f} | {r['ms_p50']:.0f} | "
            f"{r['ms_p99']:.0f} | {r['drop_rate']:.1%} |"
        )
    for batch, ratio in report["one_session_vs_bench"].items():
        lines.append(f"\nOne session, max_batch {batch}: {ratio:.0%} of `ptq4vm bench`.")
    write_report(out, report, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fp32")
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1])
    parser.add_argument("--bench-frames", type=int, default=60)
    parser.add_argument("--downsample", type=float, default=None, help="default: server's")
    parser.add_argument("--engine", default="auto", help="the server's and bench's runtime")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    size = parse_size(args.size)
    frames = encoded_frames(size)
    bench = engine_bench(
        args.model, args.size, args.bench_frames, args.downsample, engine=args.engine
    )
    print(json.dumps({"bench": bench}), flush=True)
    servers = {b: Server(args.model, b, max(args.sessions), args.engine) for b in args.max_batch}
    runs: dict[tuple[int, int], list[RunResult]] = {}
    try:
        for _ in range(args.rounds):
            for n in args.sessions:
                for batch, server in servers.items():
                    result = asyncio.run(
                        run(
                            server.url,
                            frames,
                            size,
                            args.model,
                            n,
                            args.seconds,
                            args.inflight,
                            batch,
                            args.downsample,
                        )
                    )
                    runs.setdefault((batch, n), []).append(result)
                    print(json.dumps(asdict(result)), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results = [median_results(r) for r in runs.values()]
    one = {str(r["max_batch"]): r["fps"] / bench["fps"] for r in results if r["sessions"] == 1}
    report = {
        **run_header("stream.py"),
        "model": args.model,
        "size": args.size,
        "engine": args.engine,
        "downsample": args.downsample,
        "inflight": args.inflight,
        "bench": bench,
        "results": results,
        "one_session_vs_bench": one,
    }
    print(json.dumps({"one_session_vs_bench": one}), flush=True)
    if args.out:
        write(args.out, report)


if __name__ == "__main__":
    main()
