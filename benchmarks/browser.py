"""In-tab matting benchmark (issue 21): the page's "this tab" mode in Debian's headless
Chromium (onnxruntime-web, WebAssembly SIMD + threads) next to the server's deployed engine on
the same machine in the same run, for fp32 and W8A8 at --size, per downsample ratio.

A real `ptq4vm serve` (its own PTQ4VM_HOME with the cached weights, clip and engine exports
linked in, the W8A8 model registered as a version) serves the page and the graphs; Chromium's
fake camera plays the sample clip resized to --size. Per model and ratio:

* tab: `/?mode=tab&model=M&ratio=R&fps=1000` (never paced: as fast as the tab mattes), the
  mattes shown over --seconds after --warmup frames: fps, and the page's latency (frame grab
  -> composite on screen) p50;
* auto: `/?mode=auto&fps=--target`: where "auto" settled (tab or server) and at which ratio
  (it may halve the ratio to keep up), --auto-seconds after it settled;
* server: `ptq4vm bench --model M --size --downsample R` (the engine alone, no network).

The W8A8 model is --w8a8 (an artifact directory) or, by default, a MinMax W8A8 calibration of
the sample clip made here: the exported graph, hence the speed, is the same whatever the
calibration method (only the integer values differ).

Usage: python benchmarks/browser.py [--size 512x288] [--ratios 1.0 0.5] [--seconds 15]
           [--target 15] [--w8a8 DIR] [--out docs/benchmarks/browser]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP, sample_clip_path, weights_path
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.engine.cache import ENGINES_DIR
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.paths import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import run_header

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
    registry version W8A8_VERSION."""
    cache = cache_root()
    for asset in (RVM_WEIGHTS, SAMPLE_CLIP):
        target = asset.path(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(asset.path(cache))
    (cache / ENGINES_DIR).mkdir(parents=True, exist_ok=True)
    (root / ENGINES_DIR).symlink_to(cache / ENGINES_DIR, target_is_directory=True)
    shutil.copytree(artifact, root / "models" / W8A8_VERSION)
    return root


def write_camera(path: Path, size: tuple[int, int]) -> Path:
    """The sample clip resized to `size`, as the YUV4MPEG2 file Chromium's fake camera plays."""
    width, height = size
    frames: list[NDArray[np.uint8]] = []
    for frame, _ in zip(iter_frames(sample_clip_path()), range(CAMERA_FRAMES), strict=False):
        resized = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        frames.append(np.asarray(resized, np.uint8))
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


class Server:
    """`ptq4vm serve` on a free port with `home`, serving clients/web."""

    def __init__(self, home: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {
            **os.environ,
            "PTQ4VM_HOME": str(home),
            "PTQ4VM_BUILD_DEFAULT": "false",
            "PTQ4VM_STATIC_DIR": str(WEB),
        }
        cmd = [sys.executable, "-m", "ptq4vm_core.cli", "serve", "--port", str(self.port)]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"ptq4vm serve exited: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
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


def tab_run(browser: Any, url: str, warmup: int, seconds: float) -> dict[str, Any]:
    """The page in tab mode at `url`: fps and latency p50 over `seconds` after `warmup` mattes."""
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function(f"window.ptq4vmStats.frames >= {warmup}", timeout=600_000)
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
        if end["mode"] != "tab":
            raise RuntimeError(f"the page left tab mode: {end}")
        frames = end["frames"] - first["frames"]
        return {
            "fps": 1000 * frames / (end["t"] - first["t"]),
            "ms_p50": statistics.median(latencies) if latencies else None,
            "frames": frames,
            "threads": end["threads"],
            "downsample_ratio": end["downsample_ratio"],
        }
    finally:
        page.close()


def auto_run(browser: Any, url: str, seconds: float) -> dict[str, Any]:
    """Where "auto" settled (the server, or the tab once a warm-up kept up), then `seconds`
    more: the tab may still fall behind and hand over."""
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function(
            "window.ptq4vmStats.mode === 'server' || /keeps up/.test(window.ptq4vmStats.reason)",
            timeout=600_000,
        )
        time.sleep(seconds)
        seen: dict[str, Any] = page.evaluate("({...window.ptq4vmStats})")
        return {k: seen[k] for k in ("mode", "downsample_ratio", "fps", "reason")}
    finally:
        page.close()


def engine_bench(model: str, size: str, ratio: float, frames: int, home: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "ptq4vm_core.cli", "bench", "--model", model, "--size", size]
    cmd += ["--downsample", str(ratio), "--frames", str(frames), "--json"]
    env = {**os.environ, "PTQ4VM_HOME": str(home)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# In-tab matting: headless Chromium vs the server engine ({report['size']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}; load average at start: "
        f"{report['load_average']}; {report['browser']}, onnxruntime-web "
        f"{report['onnxruntime_web']}, {report['tab_threads']} WASM threads.",
        "",
        "| model | ratio | tab fps | tab ms p50 | server engine fps | server ms p50 "
        f"| tab / server | auto at {report['target_fps']} fps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        tab, server, auto = row["tab"], row["server"], row["auto"]
        where = auto["mode"] if auto["mode"] == "server" else f"tab at {auto['downsample_ratio']}"
        lines.append(
            f"| {row['model']} | {row['ratio']} | {tab['fps']:.1f} | {tab['ms_p50']:.0f} "
            f"| {server['fps']:.1f} | {server['ms_p50']:.0f} "
            f"| {tab['fps'] / server['fps']:.2f} | {where} |"
        )
    lines += [
        "",
        "tab: the page in `?mode=tab`, unpaced; ms p50 is the page's latency (grab -> composite).",
        "server engine: `ptq4vm bench` (the deployed engine alone, all cores, no network).",
        "auto: where `?mode=auto` settled after its warm-up (it may halve the ratio to keep up).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--target", type=float, default=15.0, help="auto's frame rate")
    parser.add_argument("--auto-seconds", type=float, default=10.0)
    parser.add_argument("--bench-frames", type=int, default=60)
    parser.add_argument("--w8a8", type=Path, default=None, help="a W8A8 artifact directory")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/browser"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Debian's chromium is not installed: run `make setup`")
    size = parse_size(args.size)
    header = run_header("browser.py")
    load = os.getloadavg()
    ort_web = json.loads((WEB / "vendor" / "onnxruntime-web" / "package.json").read_text())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ptq4vm-browser-") as tmp_name:
        tmp = Path(tmp_name)
        artifact = args.w8a8 or w8a8_artifact(tmp / "artifact")
        home = make_home(tmp / "home", artifact)
        camera = write_camera(tmp / "camera.y4m", size)
        server = Server(home)
        flags = [
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
            "--no-sandbox",
        ]
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=flags)
                version = browser.version
                try:
                    for model in ("fp32", W8A8_VERSION):
                        for ratio in args.ratios:
                            common = f"{server.url}/?autostart&model={model}&ratio={ratio}"
                            common += f"&maxside={max(size)}"
                            tab = tab_run(
                                browser, f"{common}&mode=tab&fps=1000", args.warmup, args.seconds
                            )
                            auto = auto_run(
                                browser, f"{common}&mode=auto&fps={args.target}", args.auto_seconds
                            )
                            bench_model = "fp32" if model == "fp32" else str(artifact)
                            engine = engine_bench(
                                bench_model, args.size, ratio, args.bench_frames, home
                            )
                            row = {
                                "model": "fp32" if model == "fp32" else "W8A8",
                                "ratio": ratio,
                                "tab": tab,
                                "auto": auto,
                                "server": engine,
                            }
                            print(json.dumps(row), flush=True)
                            rows.append(row)
                finally:
                    browser.close()
        finally:
            server.stop()
    report = {
        **header,
        "size": args.size,
        "load_average": " ".join(f"{x:.2f}" for x in load),
        "browser": f"Chromium {version}",
        "onnxruntime_web": ort_web["version"],
        "tab_threads": rows[0]["tab"]["threads"] if rows else None,
        "target_fps": args.target,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
