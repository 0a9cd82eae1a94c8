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
* `--flood`: a start-and-vanish flood (issue 26): --flood-sessions times, from --flood-source
  (--flood-concurrency at once), open `/v1/stream`, send `start` (1280x720) and drop the TCP
  connection; meanwhile and for --after-seconds after, a witness client on another address
  (--witness-source) starts a session, sends one frame and times its first matte, again and
  again. Reports the witness's first-matte times during and after the flood (bound: 2 s), what
  the flood was told (started, refused), and the server's RSS growth (bound: 300 MiB).
* `--efficiency`: how much of the engine's own throughput the server delivers. In the same run,
  `ptq4vm bench --alpha-only` of the same model, size, ratio and threads, then 1, 2, ...
  (--saturate) sessions that send as fast as they receive (--inflight frames outstanding each,
  alpha PNG out, JPEG in), --step-seconds each, with a bench after every step: a step's served
  fps over the mean of the benches around it, its median over --rounds rounds, at the best
  session count, is the serving efficiency. Where the rest goes, per served frame, from the
  server's own histograms (decode, inference, encode, the worker's idle time between frames);
  --output alpha_raw measures with raw alpha bytes instead of PNGs (no deflate). With
  --slices N the benches are not `ptq4vm bench` runs between steps but the same timing of the
  same model in this process, interleaved with the server's work in slices of --slice-seconds:
  per --saturate session count [bench, serve, bench, ..., serve, bench] with N serve slices,
  lockstep sessions (send a frame when the last matte arrives) streaming only in theirs; the
  efficiency is all frames served per second of serving over all frames of the engine per
  second of bench (on a VM whose speed drifts between few-second windows, alternating every
  few seconds makes the drift hit both sides alike). With
  --profile, py-spy samples the server during one more step at the best session count and the
  report gives the share of its samples per part (decode, inference, encode, scheduling, event
  loop).

The server is started here (`ptq4vm serve --model M`, the default build off) unless --url
names a running one (then RSS needs --pid).

Usage: python benchmarks/load.py --sessions 3 --fps 15 --minutes 10 [--model fp32]
           [--downsample R] [--out docs/benchmarks/load]
       python benchmarks/load.py --find-max [--step-seconds 30] [--max-sessions 8] ...
       python benchmarks/load.py --flood [--flood-sessions 300] ...
       python benchmarks/load.py --efficiency --model M [--saturate 1 2 3] [--profile] ...
       python benchmarks/load.py --efficiency --slices 40 --slice-seconds 2 --saturate 2 ...

Past 400 lines on purpose: the server it starts, the paced sessions and the report are one
measurement, run as one command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from functools import partial
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
from stream import Server, encoded_frames, engine_bench, run_header
from stream import run as saturated_run

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


# Start-and-vanish flood ----------------------------------------------------------------------


def from_address(url: str, source: str) -> socket.socket:
    """A TCP connection to `url`'s host from the local address `source` (another client on
    loopback: 127.0.0.2 is not 127.0.0.1)."""
    parts = urlsplit(url)
    return socket.create_connection(
        (parts.hostname, parts.port), timeout=30, source_address=(source, 0)
    )


async def vanish_once(url: str, source: str, start: dict[str, Any]) -> str:
    """Connect from `source`, send `start`, read the answer, drop the TCP connection without a
    closing handshake; returns what the server said ("started", an error code, a close code)."""
    sock = await asyncio.to_thread(from_address, url, source)
    try:
        async with connect(url, sock=sock, compression=None, open_timeout=30) as ws:
            await ws.send(json.dumps(start))
            answer = json.loads(await ws.recv())
            ws.transport.abort()  # the client vanishes
            return str(answer.get("type") if answer.get("type") == "started" else answer["code"])
    except ConnectionClosed as exc:
        return f"close {exc.rcvd.code if exc.rcvd else 'none'}"
    except OSError as exc:
        return type(exc).__name__


async def flooder(url: str, args: argparse.Namespace, told: dict[str, int]) -> None:
    start = {"type": "start", "width": 1280, "height": 720, "input": "jpeg"}
    todo = iter(range(args.flood_sessions))

    async def lane() -> None:
        for _ in todo:
            answer = await vanish_once(url, args.flood_source, start)
            told[answer] = told.get(answer, 0) + 1

    await asyncio.gather(*(lane() for _ in range(args.flood_concurrency)))


async def first_matte(url: str, source: str, frame: bytes, start: dict[str, Any]) -> float:
    """Seconds from connecting (from `source`) to the first matte of a new session."""
    began = time.monotonic()
    sock = await asyncio.to_thread(from_address, url, source)
    async with connect(url, sock=sock, compression=None, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps(start))
        started = json.loads(await ws.recv())
        if started.get("type") != "started":
            raise RuntimeError(f"witness refused: {started}")
        await ws.send(frame)
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "matte":
                await ws.recv()  # its payload
                seconds = time.monotonic() - began
                break
        await ws.send(json.dumps({"type": "stop"}))
    return seconds


async def flood(
    url: str, base: str, pid: int | None, frames: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    width, height = parse_size(args.size)
    start = {"type": "start", "width": width, "height": height, "input": "jpeg"}
    start["model"] = args.model if args.url is None else None
    witness = partial(first_matte, url, args.witness_source, frames[0], start)
    await witness()  # the shape compiled before anything is timed
    rss_before = rss_bytes(pid) / MiB if pid is not None else None
    rss_peak = rss_before or 0.0
    told: dict[str, int] = {}
    during: list[float] = []
    after: list[float] = []
    errors: list[str] = []
    flooding = asyncio.create_task(flooder(url, args, told))
    began = time.monotonic()
    ended: float | None = None
    while ended is None or time.monotonic() - ended < args.after_seconds:
        into = during if ended is None else after
        try:
            into.append(round(await witness(), 3))
        except (RuntimeError, ConnectionClosed, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        if pid is not None:
            rss_peak = max(rss_peak, rss_bytes(pid) / MiB)
        if ended is None and flooding.done():
            ended = time.monotonic()
            flooding.result()
        await asyncio.sleep(args.witness_every)
    left = await asyncio.to_thread(gauges, base)
    rss_after = rss_bytes(pid) / MiB if pid is not None else None
    worst = max(during + after, default=float("inf"))
    return {
        "flood_sessions": args.flood_sessions,
        "flood_concurrency": args.flood_concurrency,
        "flood_seconds": round((ended or time.monotonic()) - began, 1),
        "flood_told": told,
        "witness_size": args.size,
        "witness_during_s": during,
        "witness_after_s": after,
        "witness_worst_s": worst,
        "witness_errors": errors,
        "bound_s": FIRST_MATTE_BOUND_S,
        "rss_before_mib": rss_before,
        "rss_peak_mib": rss_peak,
        "rss_after_mib": rss_after,
        "rss_growth_mib": None if rss_before is None else round(rss_peak - rss_before, 1),
        "sessions_after": left,
        "holds": bool(
            not errors
            and worst <= FIRST_MATTE_BOUND_S
            and (rss_before is None or rss_peak - rss_before < RSS_BOUND_MIB)
        ),
    }


FIRST_MATTE_BOUND_S = 2.0
RSS_BOUND_MIB = 300.0


# Serving efficiency ----------------------------------------------------------------------------

# The server's timing histograms (`server.inference.scheduler`): where a served frame's worker
# time goes.
TIMINGS = {
    "ptq4vm_decode_seconds": "decode",
    "ptq4vm_inference_seconds": "inference",
    "ptq4vm_encode_seconds": "encode",
    "ptq4vm_queue_seconds": "queue",
}


def timings(base: str) -> dict[str, float]:
    """{part_sum, part_count} of the timing histograms (summed over labels) and frames matted."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for metric, part in TIMINGS.items():
                if sample.name in (f"{metric}_sum", f"{metric}_count"):
                    key = f"{part}_{sample.name.rsplit('_', 1)[1]}"
                    totals[key] = totals.get(key, 0.0) + sample.value
            if sample.name == "ptq4vm_frames_matted_total":
                totals["frames"] = totals.get("frames", 0.0) + sample.value
    return totals


def breakdown(before: dict[str, float], after: dict[str, float], fps: float) -> dict[str, float]:
    """Per served frame (ms): decode, inference (per frame; an engine call may batch several),
    encode, the inference worker's busy time (decode + inference: the encode runs beside it,
    in a codec thread) and the wall time per frame (1000/fps)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    frames = max(1.0, d.get("frames", 0.0))
    row = {p: round(1e3 * d.get(f"{p}_sum", 0.0) / frames, 2) for p in ("decode", "encode")}
    row["inference"] = round(1e3 * d.get("inference_sum", 0.0) / frames, 2)
    row["queue"] = round(1e3 * d.get("queue_sum", 0.0) / frames, 2)
    row["busy"] = round(row["decode"] + row["inference"], 2)
    row["wall"] = round(1e3 / fps, 2) if fps > 0 else float("nan")
    row["frames"] = int(d.get("frames", 0.0))
    return row


# py-spy's frames -> the part of the server they are in, first match from the leaf up.
PARTS = (
    ("decode", ("decode_frame", "decode_image", "frames_to_batch", "_decode")),
    ("encode", ("encode_alpha", "alpha_to_uint8", "_finish")),
    ("inference", ("infer",)),
    ("scheduling", ("_execute", "_dispatch", "_take", "_finished", "_worker", "run_in_executor")),
    ("websocket", ("websockets", "send", "recv", "read_frame", "write_frame")),
    ("event loop", ("_run_once", "run_forever", "select", "asyncio")),
)


def profile_parts(raw: str) -> dict[str, float]:
    """Share of py-spy's samples (raw, collapsed stacks) per part of the server."""
    counts: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[::-1]  # leaf first
        part = next(
            (name for frame in frames for name, keys in PARTS if any(k in frame for k in keys)),
            "other",
        )
        counts[part] = counts.get(part, 0) + int(n)
    total = max(1, sum(counts.values()))
    return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


async def profiled(pid: int, seconds: float, step: Any) -> dict[str, Any]:
    """Runs `step()` with py-spy recording the server; the share of samples per part."""
    import shutil
    import tempfile

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        proc = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
            "--format", "raw", "--nonblocking", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await step()
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            return {"error": f"py-spy failed: {err.decode()[-500:]}"}
        return {"shares": profile_parts(out.read_text())}


async def efficiency(
    url: str, base: str, pid: int | None, frames: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """--rounds rounds of [bench, step, bench, step, ..., bench]: each --saturate step's served
    fps is set against the mean of the benches just before and just after it. The engine alone
    on these VMs drifts by up to 20 % from one few-second window to the next (docs/server.md,
    "Serving efficiency"), so a bench must bracket what it is compared with. For each session
    count the median of its ratios over the rounds; the efficiency is the best count's."""
    size = parse_size(args.size)
    model = args.model if args.url is None else None

    async def step(n: int) -> dict[str, Any]:
        return asdict(
            await saturated_run(
                url, frames, size, model, n, args.step_seconds, args.inflight,
                args.max_batch, args.downsample, args.output,
            )
        )  # fmt: skip

    async def bench() -> dict[str, Any]:
        return await asyncio.to_thread(
            engine_bench, args.model, args.size, args.bench_frames, args.downsample,
            alpha_only=True, engine=args.engine,
        )  # fmt: skip

    rounds = []
    for r in range(args.rounds):
        benches = [await bench()]
        print(json.dumps({"round": r, "bench": benches[0]}), flush=True)
        steps = []
        for n in args.saturate:
            before = await asyncio.to_thread(timings, base)
            row = await step(n)
            row["ms"] = breakdown(before, await asyncio.to_thread(timings, base), row["fps"])
            benches.append(await bench())
            row["bench_fps"] = round((benches[-2]["fps"] + benches[-1]["fps"]) / 2, 2)
            row["of_bench"] = round(row["fps"] / row["bench_fps"], 4)
            steps.append(row)
            print(json.dumps(row | {"bench_after": round(benches[-1]["fps"], 2)}), flush=True)
        rounds.append({"benches": benches, "steps": steps})
    by_sessions = {
        n: statistics.median(r["steps"][i]["of_bench"] for r in rounds)
        for i, n in enumerate(args.saturate)
    }
    best_n = max(by_sessions, key=lambda n: by_sessions[n])
    i = args.saturate.index(best_n)
    median = by_sessions[best_n]
    typical = min(rounds, key=lambda r: abs(r["steps"][i]["of_bench"] - median))
    part: dict[str, Any] = {
        "bench": typical["benches"][i],
        "bench_fps_rounds": [[round(b["fps"], 2) for b in r["benches"]] for r in rounds],
        "efficiency_rounds": [r["steps"][i]["of_bench"] for r in rounds],
        "efficiency_by_sessions": by_sessions,
        "bracketed": True,
        "inflight": args.inflight,
        "output": args.output,
        "step_seconds": args.step_seconds,
        "steps": typical["steps"],
        "best_sessions": best_n,
        "served_fps": typical["steps"][i]["fps"],
        "efficiency": median,
    }
    if args.profile and pid is not None:
        holder: dict[str, Any] = {}

        async def run_step() -> None:
            holder.update(await step(best_n))

        part["profile"] = await profiled(pid, args.step_seconds - 1, run_step)
        part["profile"]["fps"] = holder.get("fps")
    return part


class Gate:
    """Sessions that stream in lockstep (send a frame, wait for its matte, send the next: as fast
    as they receive) while the gate is open, and finish their frame in flight and wait while it
    is closed: the serve slices of `interleaved`."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.stopping = False
        self.outstanding = 0
        self.received: list[float] = []  # monotonic time of every matte
        self.latencies_ms: list[float] = []

    async def session(self, url: str, frames: list[bytes], start: dict[str, Any]) -> None:
        async with connect(url, compression=None, max_size=None, open_timeout=60) as ws:
            await ws.send(json.dumps(start))
            started = json.loads(await ws.recv())
            if started.get("type") != "started":
                raise RuntimeError(f"session refused: {started}")
            k = 0
            while True:
                await self.open.wait()
                if self.stopping:
                    break
                self.outstanding += 1
                sent = time.monotonic()
                await ws.send(frames[k % len(frames)])
                k += 1
                meta = json.loads(await ws.recv())
                if meta.get("type") != "matte":
                    raise RuntimeError(f"unexpected message: {meta}")
                await ws.recv()  # the matte's bytes
                now = time.monotonic()
                self.received.append(now)
                self.latencies_ms.append((now - sent) * 1e3)
                self.outstanding -= 1
            await ws.send(json.dumps({"type": "stop"}))

    async def serve(self, seconds: float, warm_s: float) -> tuple[int, float]:
        """Open for `seconds`, then closed until no frame is in flight: (mattes received after
        the first `warm_s`, the seconds they were counted over)."""
        began = time.monotonic()
        self.open.set()
        await asyncio.sleep(seconds)
        self.open.clear()
        ended = time.monotonic()
        while self.outstanding:
            await asyncio.sleep(0.005)
        counted = [t for t in self.received if began + warm_s <= t <= ended]
        return len(counted), ended - began - warm_s

    def stop(self) -> None:
        self.stopping = True
        self.open.set()


def bench_slice(
    engine: Any, batches: list[Any], ratio: float, seconds: float, warmup: int = 2
) -> tuple[int, float]:
    """The engine alone, as `ptq4vm bench --alpha-only` times it (float batches made before,
    the state carried), for `seconds` after `warmup` frames: (frames, seconds)."""
    state = None
    for i in range(warmup):
        state = engine.infer(batches[i % len(batches)], state, ratio, alpha_only=True).state
    n, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        state = engine.infer(batches[n % len(batches)], state, ratio, alpha_only=True).state
        n += 1
    return n, elapsed


def pooled_interval(
    serves: list[tuple[int, float]],
    benches: list[tuple[int, float]],
    resamples: int = 4000,
) -> tuple[float, float]:
    """95 % bootstrap interval of the pooled efficiency: serve slices drawn with replacement,
    each with the two bench slices around it (half weight each, as every inner bench slice
    sits beside two serve slices). How far the VM's noise leaves the figure uncertain."""
    rng = np.random.default_rng(0)  # the same report from the same slices
    served = np.asarray(serves, np.float64)
    bench = np.asarray(benches, np.float64)
    around = (bench[:-1] + bench[1:]) / 2  # [frames, seconds] beside serve slice i
    picks = rng.integers(0, len(served), (resamples, len(served)))
    s, b = served[picks].sum(axis=1), around[picks].sum(axis=1)
    ratios = (s[:, 0] / s[:, 1]) / (b[:, 0] / b[:, 1])
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


async def interleaved(
    url: str, base: str, frames: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Per --saturate session count: [bench, serve, bench, serve, ..., bench] in slices of
    --slice-seconds, --slices serve slices; the engine alone runs in this process (loaded once,
    the server idle), the sessions stream in lockstep while their slice lasts. The efficiency is
    the pooled ratio: all frames served over all serve time, against all frames of the engine
    alone over all bench time (throughput against throughput, the time split evenly between
    them in alternation, so the VM's drift hits both alike); each serve slice's fps against
    the mean of the bench slices around it is reported too, and their median."""
    import cv2

    from ptq4vm_core.engine import load_engine
    from ptq4vm_core.engine.frames import frames_to_batch
    from ptq4vm_core.engine.runtime import default_threads
    from ptq4vm_core.pipeline import resolve_downsample_ratio

    width, height = parse_size(args.size)
    engine = load_engine(args.model, args.engine)
    rgb = [np.asarray(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR_RGB), np.uint8)
           for f in frames]  # fmt: skip
    batches = [frames_to_batch([f]) for f in rgb]
    ratio = resolve_downsample_ratio(args.downsample, width, height)  # what the server picks
    start = {
        "type": "start", "width": width, "height": height, "input": "jpeg",
        "output": args.output, "downsample_ratio": args.downsample,
        "model": args.model if args.url is None else None,
    }  # fmt: skip
    slice_s, pause_s, warm_s = args.slice_seconds, 0.3, 0.5
    steps = []
    for n in args.saturate:
        gate = Gate()
        clients = [asyncio.create_task(gate.session(url, frames, start)) for _ in range(n)]
        await gate.serve(1.0, 0.0)  # sessions started, the shape compiled, the pipeline warm
        before = await asyncio.to_thread(timings, base)
        gate.received.clear()
        gate.latencies_ms.clear()
        benches, serves = [], []
        for k in range(args.slices + 1):
            await asyncio.sleep(pause_s)  # the other side's thread pools go idle
            benches.append(await asyncio.to_thread(bench_slice, engine, batches, ratio, slice_s))
            if k == args.slices:
                break
            await asyncio.sleep(pause_s)
            serves.append(await gate.serve(slice_s + warm_s, warm_s))
        after = await asyncio.to_thread(timings, base)
        gate.stop()
        await asyncio.gather(*clients)
        bench_fps = [f / s for f, s in benches]
        served_fps = [f / s for f, s in serves]
        ratios = [
            served_fps[i] / ((bench_fps[i] + bench_fps[i + 1]) / 2) for i in range(len(serves))
        ]
        pooled_served = sum(f for f, _ in serves) / sum(s for _, s in serves)
        pooled_bench = sum(f for f, _ in benches) / sum(s for _, s in benches)
        low, high = pooled_interval(serves, benches)
        ms = np.asarray(gate.latencies_ms)
        row = {
            "sessions": n,
            "fps": round(pooled_served, 2),
            "bench_fps": round(pooled_bench, 2),
            "of_bench": round(statistics.median(ratios), 4),
            "pooled": round(pooled_served / pooled_bench, 4),
            "pooled_ci95": [round(low, 4), round(high, 4)],
            "ratios": [round(r, 4) for r in ratios],
            "served_fps_slices": [round(f, 2) for f in served_fps],
            "bench_fps_slices": [round(f, 2) for f in bench_fps],
            "ms_p50": round(float(np.percentile(ms, 50)), 1),
            "ms_p99": round(float(np.percentile(ms, 99)), 1),
            "ms": breakdown(before, after, pooled_served),
        }
        steps.append(row)
        print(json.dumps(row), flush=True)
    best = max(steps, key=lambda r: r["pooled"])
    return {
        "interleaved": True,
        "bench": {
            "fps": best["bench_fps"],
            "engine": engine.name,
            "size": f"{width}x{height}",
            "downsample_ratio": ratio,
            "threads": default_threads(),
            "ms_p50": round(1e3 / best["bench_fps"], 1),
        },
        "slices": args.slices,
        "slice_seconds": slice_s,
        "output": args.output,
        "steps": steps,
        "best_sessions": best["sessions"],
        "served_fps": best["fps"],
        "efficiency": best["pooled"],
        "efficiency_median": best["of_bench"],
        "efficiency_ci95": best["pooled_ci95"],
        "efficiency_by_sessions": {r["sessions"]: r["pooled"] for r in steps},
        "efficiency_rounds": best["ratios"],
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
        mode, _, config = key.partition("/")
        report.setdefault(mode, {})[config] = part
    path.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report, out.with_suffix(".png").name) + "\n")
    if "soak" in report:
        plot(report["soak"], out.with_suffix(".png"))


def render(report: dict[str, Any], png: str) -> str:
    lines = ["# Load: sessions at a fixed frame rate", ""]
    lines += render_flood(report.get("flood", {}))
    lines += render_efficiency(report.get("efficiency", {}))
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


def render_flood(parts: dict[str, Any]) -> list[str]:
    lines = []
    for config, f in parts.items():
        during, after = f["witness_during_s"], f["witness_after_s"]
        told = ", ".join(f"{k} {v}" for k, v in sorted(f["flood_told"].items()))
        lines += [
            f"## Start-and-vanish flood: {config}",
            "",
            f"`{f['command']}` on {f['machine']} ({f['date']}); load average "
            f"{f['load_before']} before the run.",
            "",
            f"{f['flood_sessions']} times from one address ({f['flood_concurrency']} at once, "
            f"{f['flood_seconds']:g} s): open `/v1/stream`, send `start` (1280x720), drop the "
            f"TCP connection. What the flood was told: {told}.",
            "",
            "| witness (another address) | first mattes | median s | worst s | bound s |",
            "|---|---|---|---|---|",
        ]
        for name, times in (("during the flood", during), ("right after", after)):
            if times:
                lines.append(
                    f"| {name} | {len(times)} | {statistics.median(times):.3f} | "
                    f"{max(times):.3f} | {f['bound_s']:g} |"
                )
        growth = f["rss_growth_mib"]
        lines += [
            "",
            f"Witness errors: {len(f['witness_errors'])}. Server RSS "
            + (
                f"{f['rss_before_mib']:.0f} MiB before, peak {f['rss_peak_mib']:.0f} MiB: "
                f"growth {growth:+.1f} MiB (bound 300 MiB)."
                if growth is not None
                else "not sampled (a running server without --pid)."
            )
            + f" Sessions left after: {f['sessions_after']}.",
            "",
            f"**{'Holds' if f['holds'] else 'Does not hold'}.**",
            "",
        ]
    return lines


OUTPUTS = {"alpha_png": "alpha PNGs", "alpha_raw": "raw 8-bit alpha (H*W bytes a frame)"}


def efficiency_summary(part: dict[str, Any]) -> list[str]:
    """The efficiency paragraph: bracketed runs (each step between two benches), or the
    earlier reports' one bench per round."""
    rounds = ", ".join(f"{e:.1%}" for e in part["efficiency_rounds"])
    if part.get("interleaved"):
        by = ", ".join(
            f"{s['sessions']}: {s['pooled']:.1%} (slice median {s['of_bench']:.1%})"
            for s in part["steps"]
        )
        ci = part.get("efficiency_ci95")
        interval = f"; 95 % bootstrap interval {ci[0]:.1%} to {ci[1]:.1%}" if ci else ""
        return [
            f"**Serving efficiency: {part['efficiency']:.1%}** of the engine's fps with "
            f"{part['best_sessions']} session(s) (the median of its slices: "
            f"{part['efficiency_median']:.1%}{interval}). Per session count, [bench, serve, "
            f"bench, ..., serve, bench] in slices of {part['slice_seconds']:g} s "
            f"({part['slices']} serve "
            "slices): the engine alone in the benchmark's process while the server idles, then "
            "the sessions streaming in lockstep while the engine idles. The efficiency is all "
            "frames served per second of serving over all frames of the engine per second of "
            "bench; each serve slice's fps is also set against the mean of the bench slices "
            f"around it (their median in brackets). Sessions: {by}. The best count's slices: "
            f"{rounds}."
        ]
    if not part.get("bracketed"):
        benches = ", ".join(f"{f:.1f}" for f in part["bench_fps_rounds"])
        return [
            f"**Serving efficiency: {part['efficiency']:.1%}** of the engine's fps, the median "
            f"over {len(part['efficiency_rounds'])} rounds of [bench, then the steps] of each "
            f"round's best served fps over its bench fps (rounds: {rounds}; bench fps: "
            f"{benches}). The median round's steps below: best {part['served_fps']:.1f} fps "
            f"with {part['best_sessions']} session(s)."
        ]
    by = ", ".join(f"{n}: {e:.1%}" for n, e in part["efficiency_by_sessions"].items())
    benches = "; ".join(", ".join(f"{f:.1f}" for f in fps) for fps in part["bench_fps_rounds"])
    return [
        f"**Serving efficiency: {part['efficiency']:.1%}** of the engine's fps with "
        f"{part['best_sessions']} session(s). Each round runs [bench, step, bench, step, ..., "
        "bench], and a step's served fps is set against the mean of the two benches around it "
        "(the engine alone drifts by up to 20 % between few-second windows on this VM); per "
        "session count the median over the rounds (sessions: median ratio: "
        f"{by}). The best count's rounds: {rounds}; bench fps per round, in order: "
        f"{benches}. The median round's steps below ({part['served_fps']:.1f} fps served "
        f"with {part['best_sessions']} session(s))."
    ]


def engine_line(part: dict[str, Any]) -> list[str]:
    """The engine's own speed the report compares with, and how the sessions sent."""
    bench = part["bench"]
    engine = (
        f"({bench['engine']}, {bench['size']}, ratio {bench['downsample_ratio']:g}, "
        f"{bench['threads']} threads"
    )
    output = OUTPUTS[part.get("output", "alpha_png")]
    if part.get("interleaved"):
        return [
            f"The engine alone, timed as `ptq4vm bench --alpha-only` times it, in the "
            f"benchmark's process: **{bench['fps']:.1f} fps** over all bench slices {engine}). "
            f"Sessions send JPEG and get {output} in lockstep (the next frame when the last "
            "matte arrives: as fast as they receive), clients on the same machine."
        ]
    return [
        f"`ptq4vm bench --alpha-only` in the median round: **{bench['fps']:.1f} fps** "
        f"{engine}, p50 {bench['ms_p50']:.1f} ms). Sessions send JPEG as fast as they receive "
        f"{output} ({part['inflight']} frames outstanding each), {part['step_seconds']:g} s "
        "per step, clients on the same machine."
    ]


def render_efficiency(parts: dict[str, Any]) -> list[str]:
    lines = []
    for config, part in parts.items():
        bench = part["bench"]
        lines += [
            f"## Serving efficiency: {config}",
            "",
            f"`{part['command']}` on {part['machine']} ({part['date']}); load average "
            f"{part['load_before']} before the run.",
            "",
            *engine_line(part),
            "",
            *efficiency_summary(part),
            "",
            "Per served frame (ms, from the server's histograms): decode, inference and encode; "
            "busy, the inference worker's time (decode + inference: the encode runs beside it "
            "in a codec thread); the wall time per frame (1000 / served fps); wall - busy is the "
            "worker idle between frames (hand-offs, the event loop).",
            "",
            "| sessions | served fps | bench fps | of bench | p50 ms | p99 ms | decode | inference "
            "| encode | busy | wall | idle |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in part["steps"]:
            m = s["ms"]
            bench_fps = s.get("bench_fps", bench["fps"])
            lines.append(
                f"| {s['sessions']} | {s['fps']:.1f} | {bench_fps:.1f} | "
                f"{s['fps'] / bench_fps:.1%} | {s['ms_p50']:.0f} | {s['ms_p99']:.0f} | "
                f"{m['decode']:.1f} | {m['inference']:.1f} | {m['encode']:.1f} | "
                f"{m['busy']:.1f} | {m['wall']:.1f} | {m['wall'] - m['busy']:.1f} |"
            )
        lines.append("")
        prof = part.get("profile")
        if prof and "shares" in prof:
            shares = ", ".join(f"{k} {v:.1%}" for k, v in prof["shares"].items())
            lines += [
                f"py-spy over one more step at {part['best_sessions']} session(s) "
                f"({prof['fps']:.1f} fps served while sampled), the server's active samples "
                f"per part: {shares}.",
                "",
            ]
        elif prof:
            lines += [f"Profile: {prof['error']}", ""]
    return lines


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


def run_clients(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """The clients' loop: uvloop where installed (as the server's), so that the clients, on the
    same cores as the server, take as little of them as they can; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


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
    parser.add_argument("--efficiency", action="store_true")
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--flood-sessions", type=int, default=300)
    parser.add_argument("--flood-concurrency", type=int, default=8)
    parser.add_argument("--flood-source", default="127.0.0.2")
    parser.add_argument("--witness-source", default="127.0.0.1")
    parser.add_argument("--witness-every", type=float, default=0.2)
    parser.add_argument("--after-seconds", type=float, default=10.0)
    parser.add_argument("--saturate", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--bench-frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="efficiency: bench + steps, R times")
    parser.add_argument(
        "--output", choices=sorted(OUTPUTS), default="alpha_png", help="efficiency: matte format"
    )
    parser.add_argument("--engine", default="auto", help="the server's and bench's runtime")
    parser.add_argument("--profile", action="store_true", help="py-spy the server (efficiency)")
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument(
        "--slices", type=int, default=0, help="efficiency: interleaved serve/bench slices, N"
    )
    parser.add_argument("--slice-seconds", type=float, default=3.0)
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
        sessions = max(args.sessions, args.max_sessions, *args.saturate)
        server = Server(args.model, args.max_batch, sessions, args.engine)
        url, pid = server.url, server.proc.pid
    else:
        url, pid = args.url, args.pid
    parts = urlsplit(url)
    base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    try:
        if args.flood:
            part = run_clients(flood(url, base, pid, frames, args))
        elif args.efficiency and args.slices:
            part = run_clients(interleaved(url, base, frames, args))
        elif args.efficiency:
            part = run_clients(efficiency(url, base, pid, frames, args))
        elif args.find_max:
            part = run_clients(find_max(url, base, pid, frames, args))
        else:
            part = run_clients(soak(url, base, pid, frames, args))
    finally:
        if server is not None:
            server.stop()
    part.update(
        **run_header("load.py"),
        load_before=load_before,
        model_arg=args.model,
    )
    long = ("timeline", "per_session", "steps", "witness_during_s", "witness_after_s")
    summary = {k: v for k, v in part.items() if k not in long}
    summary.pop("bench", None)
    print(json.dumps(summary), flush=True)
    if args.out:
        model = Path(args.model).name
        ratio = "server default" if args.downsample is None else f"{args.downsample:g}"
        config = f"{model}, {args.size}, downsample {ratio}"
        if args.flood:
            key = f"flood/{args.flood_sessions} sessions from one address, witness {args.size}"
        elif args.efficiency:
            key = f"efficiency/{config}, {args.engine}, max_batch {args.max_batch}"
            if args.output != "alpha_png":
                key += f", {args.output}"
        else:
            key = "soak" if not args.find_max else f"find_max/{config}, {args.fps:g} fps"
        write(args.out, key, part)


if __name__ == "__main__":
    main()
