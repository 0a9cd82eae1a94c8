"""In-tab matting benchmark (issues 21, 29): the page's "this tab" mode in Debian's headless
Chromium (onnxruntime-web: WebAssembly SIMD + threads, WebGPU where the browser has an adapter)
beside the page's server mode and the server's deployed engine, on the same machine in the same
run, per backend, graph (the W8A8 model's int8 QDQ graph, the FP32 graph), downsample ratio and
camera size.

A real `ptq4vm serve` (its own PTQ4VM_HOME with the cached weights, clip and engine exports
linked in, the W8A8 model registered as a version) serves the page and the graphs; Chromium's
fake camera plays the sample clip resized to each --sizes entry. Per size, backend, model and
ratio:

* inference: the graph alone in the page's onnxruntime-web (`session.run` with the recurrent
  state carried, 3 warm-up + --runs timed runs), and where the time goes: onnxruntime-web's
  profiling (`enableProfiling`, its events on the console), summed per operator type;
* tab: `/?mode=tab&model=M&ratio=R&fps=1000` (one candidate, never paced): the mattes shown
  over --seconds after --warmup frames: fps, and the page's latency (grab -> composite) p50;
* server: the same page in `?mode=server` (JPEG frames over the WebSocket, 2 in flight);
* engine: `ptq4vm bench --model M --size --downsample R` (the deployed engine alone).

Then the adaptive tab as a user gets it, at the first size: `/?mode=tab&fps=--target` (no
model, no ratio: the page measures and picks), --adaptive-seconds after it settled: fps, latency
p50, what it chose and measured, and the frames it sent over a WebSocket (none expected).

The W8A8 model is --w8a8 (an artifact directory) or, by default, a MinMax W8A8 calibration of
the sample clip made here: the exported graph, hence the speed, is the same whatever the
calibration method (only the integer values differ).

Usage: python benchmarks/browser.py [--sizes 512x288 640x360] [--ratios 1 0.5 0.375 0.25]
           [--seconds 10] [--target 15] [--adaptive-seconds 30] [--w8a8 DIR]
           [--out docs/benchmarks/browser]

Past 400 lines because the page's JavaScript drivers (the inference timing, the profile),
the runs and the report are one benchmark; each part reads the others' rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP, sample_clip_path, weights_path
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.engine.cache import ENGINES_DIR
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.io.y4m import write_y4m
from ptq4vm_core.paths import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import Server, engine_bench, run_header, write_report

WEB = Path(__file__).resolve().parents[1] / "clients" / "web"
W8A8_VERSION = "bench-w8a8"
CAMERA_FRAMES = 60


def w8a8_artifact(out: Path) -> Path:
    """A MinMax W8A8 calibration of the sample clip (fast profile), in `out`."""
    import torch

    from ptq4vm_core.artifact import save_artifact
    from ptq4vm_core.calib.calibrate import calibrate
    from ptq4vm_core.calib.data import build_calibration_set
    from ptq4vm_core.calib.methods import Method, Profile
    from ptq4vm_core.model import load_rvm_from_onnx

    torch.set_num_threads(1)
    data = build_calibration_set([sample_clip_path()], frames=8, seq_len=4, max_side=176)
    result = calibrate(
        load_rvm_from_onnx(weights_path()),
        data,
        bits="w8a8",
        method=Method.MINMAX,
        profile=Profile.FAST,
        progress=lambda event: None,
    )
    return save_artifact(result, data, out / W8A8_VERSION, name=W8A8_VERSION)


def make_home(root: Path, artifact: Path) -> Path:
    """A PTQ4VM_HOME with the cache's weights, clip and engine exports, and `artifact` as the
    registry's active version W8A8_VERSION."""
    cache = cache_root()
    for asset in (RVM_WEIGHTS, SAMPLE_CLIP):
        target = asset.path(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(asset.path(cache))
    (cache / ENGINES_DIR).mkdir(parents=True, exist_ok=True)
    (root / ENGINES_DIR).symlink_to(cache / ENGINES_DIR, target_is_directory=True)
    shutil.copytree(artifact, root / "models" / W8A8_VERSION)
    # Active, as a deployed service's int8 model is: what the adaptive tab starts from.
    (root / "models" / "active.json").write_text(json.dumps({"version": W8A8_VERSION}))
    return root


def write_camera(path: Path, size: tuple[int, int]) -> Path:
    """The sample clip resized to `size`, as the YUV4MPEG2 file Chromium's fake camera plays."""
    frames = zip(iter_frames(sample_clip_path()), range(CAMERA_FRAMES), strict=False)
    resized = (cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame, _ in frames)
    return write_y4m((np.asarray(frame, np.uint8) for frame in resized), path, fps=30)


INFERENCE = """
async ([graphs, size, ratios, runs, profile]) => {
  const WARM = 3;  // untimed: the first runs at a shape compile and allocate
  const { TabMatter } = await import("/tab.js");
  const [width, height] = size;
  const out = [];
  for (const [backend, model] of graphs) {
    const matter = await TabMatter.load([backend]);
    for (const ratio of ratios) {
      const choice = { backend, model, ratio };
      const graph = TabMatter.graphFor(ratio);
      const url = `/v1/models/${encodeURIComponent(model)}/onnx?graph=${graph}`;
      const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
      const session = await matter.ort.InferenceSession.create(bytes, {
        executionProviders: [backend], graphOptimizationLevel: "all", enableProfiling: profile,
      });
      matter.sessions.set(`${backend} ${model} ${graph}`, Promise.resolve(session));
      const image = new ImageData(width, height);
      for (let i = 0; i < image.data.length; i += 1) image.data[i] = (i * 7919) % 251;
      const times = [];
      for (let k = 0; k < WARM + runs; k += 1) {
        const t = performance.now();
        await matter.matte(image, choice);
        times.push(performance.now() - t);
      }
      if (profile) session.endProfiling();
      await session.release();
      matter.sessions.clear();
      const timed = times.slice(WARM).sort((a, b) => a - b);
      out.push({ backend, model, ratio, graph, ms_p50: timed[timed.length >> 1], runs });
    }
  }
  return out;
}
"""


def browser_flags(camera: Path) -> list[str]:
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        "--no-sandbox",
    ]


def inference(
    browser: Any,
    url: str,
    graphs: list[list[str]],
    size: tuple[int, int],
    ratios: list[float],
    runs: int,
) -> list[dict[str, Any]]:
    """The graphs alone in the page's onnxruntime-web (timed), then again with its profiling
    on (the events it prints) for each row's time per operator type."""
    page = browser.new_page()
    events: list[dict[str, Any]] = []

    def on_console(message: Any) -> None:
        text = message.text.strip().rstrip(",")
        if text.startswith('{"cat" :'):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(text))

    page.on("console", on_console)
    try:
        page.goto(f"{url}/")
        rows: list[dict[str, Any]] = page.evaluate(
            INFERENCE, [graphs, list(size), ratios, runs, False]
        )
        for row in rows:
            events.clear()
            page.evaluate(
                INFERENCE, [[[row["backend"], row["model"]]], list(size), [row["ratio"]], 2, True]
            )
            row["ops_ms"] = per_op(events, runs=2)
        return rows
    finally:
        page.close()


def per_op(events: list[dict[str, Any]], runs: int) -> dict[str, float]:
    """Profiling events -> ms per run by operator type over the last `runs` runs (the first
    runs at a shape compile), largest first; onnxruntime's fused forms (QLinearConv for a QDQ
    convolution, FusedConv) show under their own names."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[
        -runs:
    ]
    totals: dict[str, float] = {}
    for event in events:
        op = event.get("args", {}).get("op_name")
        if op and any(start <= event["ts"] <= end for start, end in spans):
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000 / len(spans)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def page_run(browser: Any, url: str, mode: str, warmup: int, seconds: float) -> dict[str, Any]:
    """The page at `url` in `mode`: fps and latency p50 over `seconds` after `warmup` mattes
    (once a tab plan settled), and the binary WebSocket messages it sent meanwhile."""
    page = browser.new_page()
    sent = [0]

    def watch(ws: Any) -> None:
        ws.on(
            "framesent", lambda payload: sent.__setitem__(0, sent[0] + isinstance(payload, bytes))
        )

    page.on("websocket", watch)
    try:
        started = time.monotonic()
        page.goto(url)
        ready = f"window.ptq4vmStats.frames >= {warmup}"
        if mode == "tab":
            ready += " && window.ptq4vmStats.plan === 'settled'"
        page.wait_for_function(ready, timeout=600_000)
        settle_s = time.monotonic() - started
        first = page.evaluate("({...window.ptq4vmStats, t: performance.now()})")
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        last = first["frames"]
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = page.evaluate("({...window.ptq4vmStats})")
            if now["frames"] != last:
                latencies.append(float(now["latency_ms"]))
                last = now["frames"]
        end = page.evaluate("({...window.ptq4vmStats, t: performance.now()})")
        if end["mode"] != mode:
            raise RuntimeError(f"the page left {mode} mode: {end}")
        frames = end["frames"] - first["frames"]
        return {
            "fps": 1000 * frames / (end["t"] - first["t"]),
            "ms_p50": statistics.median(latencies) if latencies else None,
            "frames": frames,
            "seconds": seconds,
            "settle_s": settle_s,
            "frames_sent": sent[0],
            **{
                k: end.get(k) for k in ("model", "downsample_ratio", "backend", "threads", "reason")
            },
            "measured": end.get("measured"),
        }
    finally:
        page.close()


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    adaptive = report["adaptive"]
    lines = [
        "# In-tab matting: headless Chromium, its server mode and the server engine",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}; load average at start: "
        f"{report['load_average']}; {report['browser']}, onnxruntime-web "
        f"{report['onnxruntime_web']}, {report['tab_threads']} WASM threads; WebGPU: "
        f"{report['webgpu']}.",
        "",
        f"## The adaptive tab ({adaptive['size']}, `?mode=tab&fps={report['target_fps']:g}`, "
        f"{adaptive['seconds']:g} s after it settled)",
        "",
        "| fps | latency p50 ms | chose | settled after | frames sent to the server |",
        "|---|---|---|---|---|",
        f"| {adaptive['fps']:.1f} | {fmt(adaptive['ms_p50'], '.0f')} "
        f"| {adaptive['model']} on {adaptive['backend']} at ratio {adaptive['downsample_ratio']} "
        f"| {adaptive['settle_s']:.1f} s | {adaptive['frames_sent']} |",
        "",
        f"Why: {adaptive['reason']}. Measured on the way (whole frame: grab, matte, composite):",
        "",
        "| backend | model | ratio | ms |",
        "|---|---|---|---|",
        *(
            f"| {m['backend']} | {m['model']} | {m['ratio']} | {m['ms']:.0f} |"
            for m in adaptive["measured"]
        ),
        "",
        "## Per backend, graph and ratio",
        "",
        "| size | backend | model | ratio | inference ms p50 | tab fps | tab ms p50 "
        "| server-mode fps | server-mode ms p50 | engine fps | top operators (ms per run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        tab, server, engine, inf = row["tab"], row["server"], row["engine"], row["inference"]
        ops = ", ".join(f"{op} {ms:.0f}" for op, ms in list(inf["ops_ms"].items())[:4])
        lines.append(
            f"| {row['size']} | {row['backend']} | {row['model']} | {row['ratio']} "
            f"| {inf['ms_p50']:.0f} | {tab['fps']:.1f} | {fmt(tab['ms_p50'], '.0f')} "
            f"| {server['fps']:.1f} | {fmt(server['ms_p50'], '.0f')} | {engine['fps']:.1f} "
            f"| {ops} |"
        )
    lines += [
        "",
        "inference: `session.run` alone in the page's onnxruntime-web (state carried), median of "
        "the timed runs; top operators from its profiling, per run.",
        "tab: the page in `?mode=tab` with that model and ratio, unpaced; ms p50 is the page's "
        "latency (grab -> composite).",
        "server-mode: the same page streaming JPEG frames to the server over the WebSocket (2 in "
        "flight), send -> matte received.",
        "engine: `ptq4vm bench` (the deployed engine alone, all cores, no network).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512x288", "640x360"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.375, 0.25])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="timed inference runs")
    parser.add_argument("--target", type=float, default=15.0, help="the adaptive tab's rate")
    parser.add_argument("--adaptive-seconds", type=float, default=30.0)
    parser.add_argument("--bench-frames", type=int, default=40)
    parser.add_argument("--w8a8", type=Path, default=None, help="a W8A8 artifact directory")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/browser"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Debian's chromium is not installed: run `make setup`")
    header = run_header("browser.py")
    load = os.getloadavg()
    ort_web = json.loads((WEB / "vendor" / "onnxruntime-web" / "package.json").read_text())
    rows: list[dict[str, Any]] = []
    adaptive: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ptq4vm-browser-") as tmp_name:
        tmp = Path(tmp_name)
        artifact = args.w8a8 or w8a8_artifact(tmp / "artifact")
        home = make_home(tmp / "home", artifact)
        env = {"PTQ4VM_HOME": str(home), "PTQ4VM_STATIC_DIR": str(WEB)}
        server = Server(None, env=env)
        try:
            with sync_playwright() as pw:
                for index, size_text in enumerate(args.sizes):
                    size = parse_size(size_text)
                    camera = write_camera(tmp / f"camera-{size_text}.y4m", size)
                    browser = pw.chromium.launch(
                        executable_path=chromium, headless=True, args=browser_flags(camera)
                    )
                    version = browser.version
                    try:
                        page = browser.new_page()
                        page.goto(f"{server.http}/")
                        webgpu = page.evaluate(
                            "(async () => (await import('/tab.js')).chooseBackends())()"
                        )
                        page.close()
                        backends = webgpu["backends"]
                        graphs = [[b, m] for b in backends for m in (W8A8_VERSION, "fp32")]
                        found = inference(
                            browser, server.http, graphs, size, args.ratios, args.runs
                        )
                        for inf in found:
                            model, ratio, backend = inf["model"], inf["ratio"], inf["backend"]
                            common = f"{server.http}/?autostart&model={model}&ratio={ratio}"
                            common += f"&maxside={max(size)}&backend={backend}"
                            tab = page_run(
                                browser,
                                f"{common}&mode=tab&fps=1000",
                                "tab",
                                args.warmup,
                                args.seconds,
                            )
                            served = page_run(
                                browser,
                                f"{common}&mode=server",
                                "server",
                                args.warmup,
                                args.seconds,
                            )
                            bench_model = "fp32" if model == "fp32" else str(artifact)
                            engine = engine_bench(
                                bench_model, size_text, args.bench_frames, downsample=ratio
                            )
                            row = {
                                "size": size_text,
                                "backend": backend,
                                "model": "fp32" if model == "fp32" else "W8A8",
                                "ratio": ratio,
                                "inference": inf,
                                "tab": tab,
                                "server": served,
                                "engine": engine,
                            }
                            print(
                                json.dumps({k: v for k, v in row.items() if k != "inference"}),
                                flush=True,
                            )
                            rows.append(row)
                        if index == 0:
                            url = f"{server.http}/?autostart&maxside={max(size)}&mode=tab"
                            adaptive = page_run(
                                browser,
                                f"{url}&fps={args.target:g}",
                                "tab",
                                1,
                                args.adaptive_seconds,
                            )
                            adaptive["size"] = size_text
                            print(json.dumps(adaptive), flush=True)
                    finally:
                        browser.close()
        finally:
            server.stop()
    report = {
        **header,
        "sizes": args.sizes,
        "load_average": " ".join(f"{x:.2f}" for x in load),
        "browser": f"Chromium {version}",
        "onnxruntime_web": ort_web["version"],
        "webgpu": webgpu["why"],
        "tab_threads": rows[0]["tab"]["threads"] if rows else None,
        "target_fps": args.target,
        "adaptive": adaptive,
        "rows": rows,
    }
    write_report(args.out, report, render(report))


if __name__ == "__main__":
    main()
