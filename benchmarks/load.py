"""Load and soak benchmark (issue 9): N WebSocket sessions at a fixed frame rate, as cameras
send, against a real `ptq4vm serve`.

Each session sends the sample clip, resized to --size and JPEG-encoded beforehand (as
benchmarks/stream.py does), at --fps on a fixed schedule whatever comes back (a camera does
not wait for mattes; the sessions' schedules are staggered over one frame interval, as
independent cameras are). Per session: frames sent, mattes received (served fps), latency
p50/p99/max (frame sent -> matte received), frames the server dropped (latest frame wins),
errors. Meanwhile the server process's RSS (psutil when installed, else /proc) and the
session gauges of `/metrics` are sampled; after the clients stop, `/metrics` must show no
session left, active or detached (their states freed).

Two modes, each updating its own part of OUT.json and re-rendering OUT.md (+ OUT.png, the
server's memory over time):

* soak: `--sessions N --fps 15 --minutes 10`, the memory timeline and its growth.
* `--find-max`: 1, 2, 3, ... sessions at --fps for --step-seconds each, on one server; the
  largest N with p99 <= --max-p99-ms, no error and every session served >= --min-served of
  its frames (stops at the first N that misses).

The server is started here (`ptq4vm serve --model M`, the default build off) unless --url
names a running one (then RSS needs --pid).

Usage: python benchmarks/load.py --sessions 3 --fps 15 --minutes 10 [--model fp32]
           [--downsample R] [--out docs/benchmarks/load]
       python benchmarks/load.py --find-max [--step-seconds 30] [--max-sessions 8] ...

Past 400 lines on purpose: the server it starts, the paced sessions and the report are one
measurement, run as one command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ptq4vm_core.cli.common import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import Server, encoded_frames, run_header

GAUGES = ("ptq4vm_stream_sessions_active", "ptq4vm_stream_sessions_detached")
MiB = 1 << 20


@dataclass
class SessionResult:
    sent: int = 0
    matted: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    model: str | None = None
    downsample_ratio: float | None = None

    def summary(self) -> dict[str, Any]:
        ms = np.asarray(self.latencies_ms or [float("nan")])
        return {
            "sent": self.sent,
            "matted": self.matted,
            "dropped": self.dropped,
            "served": round(self.matted / max(1, self.sent), 4),
            "fps": round(self.matted / max(1e-9, self.seconds), 2),
            "ms_p50": round(float(np.percentile(ms, 50)), 1),
            "ms_p99": round(float(np.percentile(ms, 99)), 1),
            "ms_max": round(float(ms.max()), 1),
            "errors": self.errors,
        }


# The server, from outside ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`: psutil when installed, else /proc/PID/status."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


def gauges(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in GAUGES and not sample.labels:
                values[sample.name.removeprefix("ptq4vm_stream_")] = sample.value
    return values


async def sample_memory(
    base: str, pid: int | None, every_s: float, timeline: list[dict[str, float]]
) -> None:
    """Appends {t, rss_mib, sessions_active, sessions_detached} every `every_s` until cancelled."""
    began = time.monotonic()
    while True:
        point: dict[str, float] = {"t": round(time.monotonic() - began, 1)}
        if pid is not None:
            point["rss_mib"] = round(rss_bytes(pid) / MiB, 1)
        point.update(await asyncio.to_thread(gauges, base))
        timeline.append(point)
        await asyncio.sleep(every_s)


# Clients --------------------------------------------------------------------------------------


async def paced_session(
    url: str,
    frames: list[bytes],
    start: dict[str, Any],
    fps: float,
    seconds: float,
    offset_s: float,
) -> SessionResult:
    """One camera: a frame every 1/fps s from `offset_s` for `seconds`, then `stop`."""
    result = SessionResult()
    sent_at: dict[int, float] = {}
    try:
        async with connect(url, compression=None, max_size=None, open_timeout=60) as ws:
            await ws.send(json.dumps(start))
            started = json.loads(await ws.recv())
            if started.get("type") != "started":
                result.errors.append(f"refused: {started.get('code')}")
                return result
            result.model, result.downsample_ratio = started["model"], started["downsample_ratio"]

            async def receive() -> None:
                async for message in ws:
                    if isinstance(message, bytes):
                        continue  # the matte's payload
                    obj = json.loads(message)
                    if obj["type"] == "matte":
                        result.latencies_ms.append((time.monotonic() - sent_at[obj["seq"]]) * 1e3)
                        result.matted += 1
                        result.dropped += len(obj["dropped"])
                    elif obj["type"] == "error":
                        result.errors.append(str(obj["code"]))
                    elif obj["type"] == "stopped":
                        return

            receiver = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            began = loop.time() + offset_s
            period = 1.0 / fps
            for k in range(round(seconds * fps)):
                await asyncio.sleep(max(0.0, began + k * period - loop.time()))
                sent_at[k] = time.monotonic()
                await ws.send(frames[k % len(frames)])
                result.sent += 1
            result.seconds = loop.time() - began
            await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, timeout=60)
    except (ConnectionClosed, OSError, TimeoutError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    return result


async def run_sessions(
    url: str, frames: list[bytes], args: argparse.Namespace, sessions: int, seconds: float
) -> list[SessionResult]:
    width, height = parse_size(args.size)
    start = {
        "type": "start",
        "width": width,
        "height": height,
        "input": "jpeg",
        "output": "alpha_png",
        "downsample_ratio": args.downsample,
        "model": args.model if args.url is None else None,
    }
    stagger = 1.0 / (args.fps * sessions)
    return list(
        await asyncio.gather(
            *(
                paced_session(url, frames, start, args.fps, seconds, i * stagger)
                for i in range(sessions)
            )
        )
    )


def combine(results: list[SessionResult], fps: float) -> dict[str, Any]:
    """The step's verdict inputs: latency over all frames, served and fps per session."""
    everything = SessionResult(
        sent=sum(r.sent for r in results),
        matted=sum(r.matted for r in results),
        dropped=sum(r.dropped for r in results),
        errors=[e for r in results for e in r.errors],
        latencies_ms=[x for r in results for x in r.latencies_ms],
        seconds=max((r.seconds for r in results), default=0.0),
    )
    row = everything.summary()
    per = [r.summary() for r in results]
    row.update(
        sessions=len(results),
        target_fps=fps,
        fps=round(sum(p["fps"] for p in per), 2),
        session_fps_min=min(p["fps"] for p in per),
        session_served_min=min(p["served"] for p in per),
        model=results[0].model,
        downsample_ratio=results[0].downsample_ratio,
        per_session=per,
    )
    return row


async def after_clients(base: str, pid: int | None, settle_s: float = 2.0) -> dict[str, float]:
    """Sessions left (active, detached) and RSS once the clients have stopped."""
    await asyncio.sleep(settle_s)
    after: dict[str, float] = dict(await asyncio.to_thread(gauges, base))
    if pid is not None:
        after["rss_mib"] = round(rss_bytes(pid) / MiB, 1)
    return after


# Modes ---------------------------------------------------------------------------------------


async def soak(
    url: str, base: str, pid: int | None, frames: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    timeline: list[dict[str, float]] = []
    sampler = asyncio.create_task(sample_memory(base, pid, args.sample_seconds, timeline))
    try:
        results = await run_sessions(url, frames, args, args.sessions, args.minutes * 60)
        after = await after_clients(base, pid)
    finally:
        sampler.cancel()
    row = combine(results, args.fps)
    row.update(minutes=args.minutes, after=after, timeline=timeline, memory=memory_trend(timeline))
    return row


def memory_trend(timeline: list[dict[str, float]], warmup_s: float = 60.0) -> dict[str, Any]:
    """RSS growth after the warm-up (ONNX Runtime arenas, first sessions): the first and last
    samples, and the slope of a least-squares line in MiB per minute."""
    points = [(p["t"], p["rss_mib"]) for p in timeline if "rss_mib" in p and p["t"] >= warmup_s]
    if len(points) < 3:
        return {}
    t, rss = np.asarray(points).T
    slope = float(np.polyfit(t / 60.0, rss, 1)[0])
    return {
        "warmup_s": warmup_s,
        "rss_first_mib": float(rss[0]),
        "rss_last_mib": float(rss[-1]),
        "rss_max_mib": float(rss.max()),
        "growth_mib": round(float(rss[-1] - rss[0]), 1),
        "slope_mib_per_min": round(slope, 2),
    }


def passes(row: dict[str, Any], args: argparse.Namespace) -> bool:
    return bool(
        row["ms_p99"] <= args.max_p99_ms
        and not row["errors"]
        and row["session_served_min"] >= args.min_served
    )


async def find_max(
    url: str, base: str, pid: int | None, frames: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    steps = []
    best = 0
    for n in range(1, args.max_sessions + 1):
        results = await run_sessions(url, frames, args, n, args.step_seconds)
        row = combine(results, args.fps)
        row["after"] = await after_clients(base, pid)
        row["passed"] = passes(row, args)
        row.pop("per_session")
        steps.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "errors"}), flush=True)
        if not row["passed"]:
            break
        best = n
    return {
        "criteria": {
            "fps": args.fps,
            "max_p99_ms": args.max_p99_ms,
            "min_served": args.min_served,
            "errors": 0,
        },
        "step_seconds": args.step_seconds,
        "max_sessions": best,
        "steps": steps,
    }


# Report --------------------------------------------------------------------------------------


def write(out: Path, key: str, part: dict[str, Any]) -> None:
    """Merges `part` under `key` ("soak" or "find_max/<config>") into OUT.json; renders."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if key == "soak":
        report["soak"] = part
    else:
        report.setdefault("find_max", {})[key] = part
    path.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report, out.with_suffix(".png").name) + "\n")
    if "soak" in report:
        plot(report["soak"], out.with_suffix(".png"))


def render(report: dict[str, Any], png: str) -> str:
    lines = ["# Load: sessions at a fixed frame rate", ""]
    for config, part in report.get("find_max", {}).items():
        c = part["criteria"]
        lines += [
            f"## Largest load that holds: {config}",
            "",
            f"`{part['command']}` on {part['machine']} ({part['date']}); load average "
            f"{part['load_before']} before the run.",
            "",
            f"Sessions at {c['fps']:g} fps each, {part['step_seconds']:g} s per step. A step "
            f"holds when p99 <= {c['max_p99_ms']:g} ms, no error, and every session is served "
            f">= {c['min_served']:.0%} of its frames.",
            "",
            f"**Largest number of sessions that holds: {part['max_sessions']}.**",
            "",
            "| sessions | served fps (total) | min session fps | min served | p50 ms | p99 ms "
            "| max ms | dropped | errors | sessions left | holds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in part["steps"]:
            left = int(s["after"]["sessions_active"] + s["after"]["sessions_detached"])
            lines.append(
                f"| {s['sessions']} | {s['fps']:.1f} | {s['session_fps_min']:.1f} | "
                f"{s['session_served_min']:.1%} | {s['ms_p50']:.0f} | {s['ms_p99']:.0f} | "
                f"{s['ms_max']:.0f} | {s['dropped']} | {len(s['errors'])} | {left} | "
                f"{'yes' if s['passed'] else 'no'} |"
            )
        lines.append("")
    soak = report.get("soak")
    if soak:
        m = soak["memory"]
        after = soak["after"]
        lines += [
            f"## Soak: {soak['sessions']} sessions at {soak['target_fps']:g} fps for "
            f"{soak['minutes']:g} min",
            "",
            f"`{soak['command']}` on {soak['machine']} ({soak['date']}); load average "
            f"{soak['load_before']} before the run. Model {soak['model']}, downsample ratio "
            f"{soak['downsample_ratio']}.",
            "",
            "| session | sent | served | fps | p50 ms | p99 ms | max ms | dropped | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(soak["per_session"]):
            lines.append(
                f"| {i + 1} | {s['sent']} | {s['served']:.1%} | {s['fps']:.1f} | "
                f"{s['ms_p50']:.0f} | {s['ms_p99']:.0f} | {s['ms_max']:.0f} | {s['dropped']} | "
                f"{len(s['errors'])} |"
            )
        lines.append(
            f"| all | {soak['sent']} | {soak['served']:.1%} | {soak['fps']:.1f} | "
            f"{soak['ms_p50']:.0f} | {soak['ms_p99']:.0f} | {soak['ms_max']:.0f} | "
            f"{soak['dropped']} | {len(soak['errors'])} |"
        )
        lines += [""]
        if m:
            lines.append(
                f"Server RSS after the {m['warmup_s']:g} s warm-up: {m['rss_first_mib']:.0f} MiB "
                f"-> {m['rss_last_mib']:.0f} MiB at the end (max {m['rss_max_mib']:.0f}); "
                f"growth {m['growth_mib']:+.1f} MiB, least-squares slope "
                f"{m['slope_mib_per_min']:+.2f} MiB/min."
            )
        lines += [
            f"After the clients stopped: {after['sessions_active']:g} active and "
            f"{after['sessions_detached']:g} detached sessions in `/metrics`"
            + (f", RSS {after['rss_mib']:.0f} MiB." if "rss_mib" in after else "."),
            "",
            f"![server memory over time]({png})",
        ]
    return "\n".join(lines)


def plot(soak: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = [p for p in soak["timeline"] if "rss_mib" in p]
    if not timeline:
        return
    t = [p["t"] / 60 for p in timeline]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["rss_mib"] for p in timeline], color="tab:blue", label="server RSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.set_ylim(bottom=0)
    sessions = ax.twinx()
    sessions.step(t, [p.get("sessions_active", 0) for p in timeline], color="tab:orange")
    sessions.set_ylabel("active sessions", color="tab:orange")
    sessions.set_ylim(0, max(p.get("sessions_active", 0) for p in timeline) + 1)
    ax.set_title(
        f"{soak['sessions']} sessions at {soak['target_fps']:g} fps, {soak['minutes']:g} min"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fp32")
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--downsample", type=float, default=None, help="default: server's")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument("--max-sessions", type=int, default=8)
    parser.add_argument("--max-p99-ms", type=float, default=150.0)
    parser.add_argument("--min-served", type=float, default=0.95)
    parser.add_argument("--url", help="ws://H:P/v1/stream of a running server (else one starts)")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for its RSS")
    parser.add_argument("--out", type=Path, help="update OUT.json, OUT.md and OUT.png")
    args = parser.parse_args()

    frames = encoded_frames(parse_size(args.size))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    server = None
    if args.url is None:
        server = Server(args.model, 1, max(args.sessions, args.max_sessions))
        url, pid = server.url, server.proc.pid
    else:
        url, pid = args.url, args.pid
    parts = urlsplit(url)
    base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    try:
        if args.find_max:
            part = asyncio.run(find_max(url, base, pid, frames, args))
        else:
            part = asyncio.run(soak(url, base, pid, frames, args))
    finally:
        if server is not None:
            server.stop()
    part.update(
        **run_header("load.py"),
        load_before=load_before,
        model_arg=args.model,
    )
    summary = {k: v for k, v in part.items() if k not in ("timeline", "per_session", "steps")}
    print(json.dumps(summary), flush=True)
    if args.out:
        model = Path(args.model).name
        ratio = "server default" if args.downsample is None else f"{args.downsample:g}"
        key = "soak" if not args.find_max else f"{model}, {args.size}, downsample {ratio}"
        write(args.out, key, part)


if __name__ == "__main__":
    main()
