"""WebRTC (WHIP) against the WebSocket stream (issue 28, item 7), in one run on one server.

Sessions publish the sample clip at --size and --fps, in real time (a frame every 1/fps, not
as fast as served), for --seconds, first over `/v1/stream` (JPEG frames, alpha PNG mattes: the
browser's server mode) and then over `POST /v1/whip` (a VP8 track out, the alpha track back,
the SDK's `WhipPublisher`), against the same `ptq4vm serve` and model. Reported per transport
and session count: served fps per session (mattes a second), latency p50/p95 (frame sent ->
matte received over the WebSocket; frame captured -> returned frame decoded over WebRTC, for
frames matted themselves), the drop rate, and CPU: the server process's and the clients' (this
process) CPU seconds per stream-second, in percent of one core.

Usage: python benchmarks/webrtc.py [--model fp32] [--size 512x288] [--fps 15]
       [--sessions 1 2] [--seconds 20] [--out docs/benchmarks/webrtc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from ptq4vm_client.whip import WhipPublisher
from websockets.asyncio.client import connect

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.io.video import iter_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import Server, provenance, run_header, write_report


@dataclass(frozen=True)
class Row:
    transport: str
    sessions: int
    fps_per_session: float
    ms_p50: float
    ms_p95: float
    drop_rate: float
    server_cpu_pct_per_stream: float
    client_cpu_pct_per_stream: float


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clip(size: tuple[int, int], count: int) -> list[NDArray[np.uint8]]:
    frames = [f for f, _ in zip(iter_frames(sample_clip_path()), range(120), strict=False)]
    resized = [
        np.asarray(cv2.resize(f, size, interpolation=cv2.INTER_LINEAR), np.uint8) for f in frames
    ]
    return [resized[i % len(resized)] for i in range(count)]


async def ws_session(
    url: str, frames: list[NDArray[np.uint8]], fps: float, model: str
) -> tuple[int, int, list[float], float]:
    """Frames at `fps` over /v1/stream: (sent, matted, latencies s, seconds)."""
    jpegs = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
             for f in frames]  # fmt: skip
    height, width = frames[0].shape[:2]
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    async with connect(url, compression=None, max_size=None) as ws:
        start = {"type": "start", "width": width, "height": height, "input": "jpeg",
                 "output": "alpha_png", "model": model}  # fmt: skip
        await ws.send(json.dumps(start))
        started = json.loads(await ws.recv())
        if started.get("type") != "started":
            raise RuntimeError(f"session refused: {started}")
        matted = 0
        began = time.monotonic()

        async def send() -> None:
            for i, data in enumerate(jpegs):
                await asyncio.sleep(max(0.0, began + i / fps - time.monotonic()))
                sent_at[i] = time.monotonic()
                await ws.send(data)
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        async for message in ws:
            if isinstance(message, bytes):
                continue
            obj = json.loads(message)
            if obj["type"] == "stopped":
                break
            if obj["type"] == "matte":
                latencies.append(time.monotonic() - sent_at[obj["seq"]])
                matted += 1
        await sender
    return len(jpegs), matted, latencies, len(jpegs) / fps


async def whip_session(
    url: str, frames: list[NDArray[np.uint8]], fps: float, model: str
) -> tuple[int, int, list[float], float]:
    result = await WhipPublisher(url, output="alpha", model=model).run(frames, fps=fps)
    return result.sent, result.matted, result.latencies_s, result.sent / fps


async def measure(
    transport: str, server: Server, frames: list[NDArray[np.uint8]], fps: float, model: str,
    sessions: int,
) -> Row:  # fmt: skip
    url = server.url if transport == "websocket" else server.url.replace(
        "ws://", "http://").replace("/v1/stream", "/v1/whip")  # fmt: skip
    run = ws_session if transport == "websocket" else whip_session
    server_cpu, client_cpu = process_cpu_s(server.proc.pid), time.process_time()
    results = await asyncio.gather(*(run(url, frames, fps, model) for _ in range(sessions)))
    server_cpu = process_cpu_s(server.proc.pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    sent = sum(r[0] for r in results)
    matted = sum(r[1] for r in results)
    stream_seconds = sum(r[3] for r in results)
    ms = np.asarray([x for r in results for x in r[2]]) * 1e3
    return Row(
        transport=transport,
        sessions=sessions,
        fps_per_session=round(matted / stream_seconds, 2),
        ms_p50=round(float(np.percentile(ms, 50)), 1) if ms.size else float("nan"),
        ms_p95=round(float(np.percentile(ms, 95)), 1) if ms.size else float("nan"),
        drop_rate=round(1 - matted / max(1, sent), 3),
        server_cpu_pct_per_stream=round(100 * server_cpu / stream_seconds, 1),
        client_cpu_pct_per_stream=round(100 * client_cpu / stream_seconds, 1),
    )


def write(out: Path, report: dict[str, Any]) -> None:
    """The report and its markdown."""
    setup = f"{report['model']}, {report['size']}, {report['fps']:g} fps per session"
    lines = [
        f"# WebRTC (WHIP) vs WebSocket ({setup})",
        "",
        provenance(report),
        "",
        "Both transports against one `ptq4vm serve`, the alpha matte coming back; clients in "
        "this process on the same machine (their CPU is the clients' share).",
        "",
        "| transport | sessions | served fps / session | p50 ms | p95 ms | dropped | server CPU "
        "% / stream | client CPU % / stream |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['transport']} | {r['sessions']} | {r['fps_per_session']:.1f} | "
            f"{r['ms_p50']:.0f} | {r['ms_p95']:.0f} | {r['drop_rate']:.0%} | "
            f"{r['server_cpu_pct_per_stream']:.0f} | {r['client_cpu_pct_per_stream']:.0f} |"
        )
    lines += [
        "",
        "Latency: WebSocket, frame sent -> matte message received; WebRTC, frame handed to "
        "the VP8 encoder -> the returned frame decoded (both codecs and the jitter buffer "
        "included), for frames matted themselves.",
    ]
    write_report(out, report, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fp32")
    parser.add_argument("--size", default="512x288", type=parse_size)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/webrtc"))
    args = parser.parse_args()
    frames = clip(args.size, round(args.fps * args.seconds))
    server = Server(args.model, 1, max(args.sessions))
    rows = []
    try:
        for sessions in args.sessions:
            for transport in ("websocket", "webrtc"):
                row = asyncio.run(measure(transport, server, frames, args.fps, args.model,
                                          sessions))  # fmt: skip
                print(row, flush=True)
                rows.append(asdict(row))
    finally:
        server.stop()
    report = {
        **run_header("webrtc.py"),
        "model": args.model,
        "size": f"{args.size[0]}x{args.size[1]}",
        "fps": args.fps,
        "results": rows,
    }
    write(args.out, report)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
