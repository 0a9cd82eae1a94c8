"""The page's "this tab" and "auto" modes (DESIGN 4.5) in headless Chromium (Debian's), with a
fake camera fed from the sample clip, against a real server whose active version is a real
W8A8 artifact: the tab runs that version's exported int8 graph (or fp32's, when this device
measured it faster) in onnxruntime-web, at the downsample ratio it measured to keep up.

Past 400 lines because the tab's tests share one server, one W8A8 version and the page
fixtures: the plan's rules, the backend choice and the parity run in the same page module.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.io.y4m import write_y4m
from tests.clients.test_browser import WEB, chromium_path, fake_camera_args
from tests.server.conftest import RunningServer, ServerFactory

VENDORED = WEB / "vendor" / "onnxruntime-web" / "ort.wasm.min.mjs"
VERSION = "tab-w8a8"
FRAMES = 30
TIMEOUT_MS = 180_000
CONFERENCE_SIZE = (512, 288)

pytestmark = pytest.mark.browser
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def tab_server(start_server: ServerFactory, quantized_artifact: Path) -> RunningServer:
    if not VENDORED.is_file():
        pytest.fail(f"{VENDORED} is missing: run `make setup` (it vendors onnxruntime-web)")
    server = start_server(static_dir=WEB)
    server.services.registry.register(quantized_artifact, VERSION, activate=True)
    return server


@pytest.fixture(scope="module")
def camera(clip_rgb: list[NDArray[np.uint8]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip's first half, then its second half in negative: a scene cut in the middle
    (and one more where the loop starts over)."""
    half = len(clip_rgb) // 2
    frames = clip_rgb[:half] + [255 - frame for frame in clip_rgb[half:]]
    return write_y4m(frames, tmp_path_factory.mktemp("camera") / "camera.y4m")


@dataclass
class Sockets:
    """The WebSockets a page opened and the binary messages (frames) sent on them."""

    urls: list[str] = field(default_factory=list)
    frames_sent: int = 0

    def watch(self, ws: Any) -> None:
        self.urls.append(ws.url)
        ws.on("framesent", self._sent)

    def _sent(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            self.frames_sent += 1


@pytest.fixture
def sockets() -> Sockets:
    return Sockets()


@pytest.fixture(scope="module")
def conference_camera(
    clip_rgb: list[NDArray[np.uint8]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The clip at a conferencing size, 512x288, as a user's camera gives it."""
    frames = [
        np.asarray(cv2.resize(f, CONFERENCE_SIZE, interpolation=cv2.INTER_LINEAR), np.uint8)
        for f in clip_rgb
    ]
    return write_y4m(frames, tmp_path_factory.mktemp("camera") / "conference.y4m")


@contextmanager
def open_page(camera: Path, sockets: Sockets) -> Iterator[Any]:
    """A Chromium page whose camera plays `camera`, its WebSockets watched by `sockets`."""
    from playwright.sync_api import sync_playwright

    args = fake_camera_args(camera)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            page = browser.new_page()
            page.on("websocket", sockets.watch)
            yield page
        finally:
            browser.close()


@pytest.fixture
def page(camera: Path, sockets: Sockets) -> Iterator[Any]:
    with open_page(camera, sockets) as page:
        yield page


@pytest.fixture
def conference_page(conference_camera: Path, sockets: Sockets) -> Iterator[Any]:
    with open_page(conference_camera, sockets) as page:
        yield page


def stats(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("({...window.ptq4vmStats})")
    return result


def test_tab_mode_measures_then_mattes_without_the_websocket(
    tab_server: RunningServer, conference_page: Any, sockets: Sockets
) -> None:
    """A 512x288 camera at 15 fps requested: the page measures the graphs (the active int8
    version and fp32) down the ratio ladder, settles on what it measured, and no frame leaves
    the tab. (How fast it then runs is benchmarks/browser.py's report, not a timed test.)"""
    page = conference_page
    page.goto(f"{tab_server.http}/?mode=tab&fps=15&autostart")
    page.wait_for_function("window.ptq4vmStats.plan === 'settled'", timeout=TIMEOUT_MS)
    settled_at = stats(page)["frames"]
    page.wait_for_function(f"window.ptq4vmStats.frames >= {settled_at + 10}", timeout=TIMEOUT_MS)
    seen = stats(page)
    assert (seen["mode"], seen["requested"], seen["target_fps"]) == ("tab", "tab", 15)
    assert page.evaluate("self.crossOriginIsolated"), "no COOP/COEP: WASM threads are off"
    assert seen["threads"] >= 1
    assert seen["latency_ms"] > 0
    # Both graphs were candidates; what runs is a row it measured, at the first ratio (largest
    # first) where the fastest candidate fitted the frame budget, or the fastest of all.
    measured = seen["measured"]
    assert {row["model"] for row in measured} == {VERSION, "fp32"}, measured
    assert all(row["ms"] > 0 for row in measured)
    chosen = (seen["backend"], seen["model"], seen["downsample_ratio"])
    rows = {(row["backend"], row["model"], row["ratio"]): row["ms"] for row in measured}
    assert chosen in rows, (chosen, measured)
    budget = page.evaluate("import('/plan.js').then((plan) => plan.HEADROOM)") * 1000 / 15
    fitting = [key for key, ms in rows.items() if ms <= budget]
    if fitting:
        best_ratio = max(key[2] for key in fitting)
        at_best = {key: ms for key, ms in rows.items() if key[2] == best_ratio}
        assert chosen == min(at_best, key=at_best.__getitem__), (chosen, measured)
    else:
        assert chosen == min(rows, key=rows.__getitem__), (chosen, measured)
    # The page shows where it runs, at which ratio, on which backend.
    assert page.text_content("#mode-now") == "this tab"
    assert page.text_content("#ratio-now") == str(seen["downsample_ratio"]).removesuffix(".0")
    assert page.text_content("#backend-now") == f"{seen['backend']} (settled)"
    assert page.text_content("#model") == seen["model"]
    # WebGPU is measured where this browser gives an adapter (none here: no GPU), else WASM.
    has_adapter = page.evaluate("(async () => !!(await navigator.gpu?.requestAdapter()))()")
    backends = {"webgpu", "wasm"} if has_adapter else {"wasm"}
    assert {row["backend"] for row in measured} == backends, (measured, seen["backend_reason"])
    # Nothing went to the server but the graphs.
    assert sockets.urls == []
    assert sockets.frames_sent == 0
    assert page.evaluate("window.ptq4vm.sent") == 0


def test_tab_mattes_match_the_server(tab_server: RunningServer, page: Any) -> None:
    """The frames the tab matted (as it saw them) streamed to the server with the same version
    and ratio, and a reset where the tab saw a scene cut: the mattes agree within 2/255 on
    average, frame by frame."""
    page.goto(f"{tab_server.http}/?mode=tab&autostart&model={VERSION}&ratio=1&record={FRAMES}")
    page.wait_for_function(
        f"window.ptq4vm.recording?.frames.length >= {FRAMES}", timeout=TIMEOUT_MS
    )
    recording = page.evaluate("window.ptq4vm.exportRecording()")
    width, height = recording["width"], recording["height"]
    ratio = recording["frames"][0]["ratio"]
    assert (width, height, ratio) == (176, 144, 1.0)
    assert {(f["model"], f["ratio"]) for f in recording["frames"]} == {(VERSION, 1.0)}
    assert any(frame["reset"] for frame in recording["frames"]), "the cut went unnoticed"
    errors = []
    mattes = []
    with tab_server.stream(
        width=width,
        height=height,
        input="rgb24",
        output="alpha_raw",
        downsample_ratio=ratio,
        model=VERSION,
    ) as stream:
        assert stream.started["model"] == VERSION
        for frame in recording["frames"]:
            if frame["reset"]:
                stream.send_json({"type": "reset"})
            _, payload = stream.matte(base64.b64decode(frame["rgb"]))
            server = np.frombuffer(payload, np.uint8).astype(np.int16)
            tab = np.frombuffer(base64.b64decode(frame["alpha"]), np.uint8).astype(np.int16)
            errors.append(float(np.abs(server - tab).mean()))
            mattes.append(tab)
    logger.info(
        "tab vs server, %d frames, %d resets: mean |difference| %.3f/255 (worst frame %.3f)",
        len(errors),
        sum(f["reset"] for f in recording["frames"]),
        float(np.mean(errors)),
        max(errors),
    )
    assert max(errors) <= 2.0, errors
    # Not trivial mattes: the person is there.
    assert 10 < float(np.mean(mattes)) < 245


def test_auto_falls_back_to_the_server_when_the_tab_is_throttled(
    tab_server: RunningServer, page: Any, sockets: Sockets
) -> None:
    # One graph at one ratio: the plan has one thing to measure, throttled (the measuring
    # starts with the tab's first matte; loading the runtime and the model unthrottled, and
    # one candidate, keep the test short).
    page.goto(f"{tab_server.http}/?mode=auto&fps=15&model={VERSION}&ratio=1&autostart")
    page.wait_for_function("window.ptq4vmStats.frames >= 1", timeout=TIMEOUT_MS)
    assert stats(page)["mode"] == "tab"
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 20})
    page.wait_for_function(
        "window.ptq4vmStats.mode === 'server' && window.ptq4vm.sent >= 5", timeout=TIMEOUT_MS
    )
    # Mattes from the server after the switch: frames went over the WebSocket and came back.
    page.wait_for_function(
        f"window.ptq4vmStats.frames >= {stats(page)['frames'] + 3}", timeout=TIMEOUT_MS
    )
    seen = stats(page)
    assert seen["requested"] == "auto"
    assert "too slow" in seen["reason"] or "fell behind" in seen["reason"], seen
    assert sockets.frames_sent >= 5
    assert page.text_content("#mode-now") == "server (auto)"


# The plan's rules (clients/web/plan.js) driven with given frame times, in the page's own
# module: what it measures, what it skips, what it picks, when it moves or hands over.
DRIVE_PLAN = """
async ([times, options, behindMs]) => {
  const { TabPlan } = await import("/plan.js");
  const plan = new TabPlan(options);
  const visited = [];
  let now = 0;
  let verdict = "tab";
  const frame = (ms) => { now += ms; return plan.onFrame(ms, now); };
  for (let i = 0; i < 500 && plan.phase === "measuring" && verdict === "tab"; i += 1) {
    const c = plan.current();
    const key = `${c.backend} ${c.model} ${c.ratio}`;
    if (!visited.includes(key)) visited.push(key);
    if (times[key] === "fail") verdict = plan.onFailure(c, new Error("no session"));
    else verdict = frame(times[key]);
  }
  const settled = { verdict, chosen: plan.chosen, phase: plan.phase, reason: plan.reason };
  // Settled, the frames then come every behindMs / 10 ms for 2 BEHIND_MS.
  let later = null;
  if (behindMs && verdict === "tab") {
    for (let i = 0; i < 40 && verdict === "tab" && plan.phase === "settled"; i += 1) {
      verdict = frame(behindMs);
    }
    later = { verdict, phase: plan.phase, reason: plan.reason, current: plan.current() };
  }
  return { settled, later, visited, measured: plan.measured, failed: plan.failed };
}
"""
LADDER = [1, 0.75, 0.5, 0.375, 0.25]
CANDIDATES = [{"backend": "wasm", "model": "int8"}, {"backend": "wasm", "model": "fp32"}]
# What 512x288 costs here, roughly: the two graphs cross over as the ratio goes down.
TIMES = {
    **{f"wasm int8 {r:g}": ms for r, ms in zip(LADDER, [330, 190, 90, 60, 30], strict=True)},
    **{f"wasm fp32 {r:g}": ms for r, ms in zip(LADDER, [280, 170, 95, 50, 28], strict=True)},
}


def drive(page: Any, times: dict[str, Any], behind_ms: float = 0, **options: Any) -> Any:
    options = {"candidates": CANDIDATES, "ratios": LADDER, "target": 15, **options}
    return page.evaluate(DRIVE_PLAN, [times, options, behind_ms])


def test_the_plan_picks_the_largest_ratio_it_measured_to_keep_up(
    tab_server: RunningServer, page: Any
) -> None:
    page.goto(f"{tab_server.http}/")
    run = drive(page, TIMES)
    # 1: both too slow; 0.75 predicted at 280 * 0.75^2 = 158 ms, past 1.5x the 57 ms budget
    # (0.85 of 1/15 s): skipped unmeasured; 0.5 measured, too slow; 0.375: fp32 (50 ms) fits,
    # int8 (60) not.
    assert run["visited"] == [
        "wasm int8 1", "wasm fp32 1", "wasm int8 0.5", "wasm fp32 0.5",
        "wasm int8 0.375", "wasm fp32 0.375",
    ]  # fmt: skip
    assert run["settled"]["chosen"] == {"backend": "wasm", "model": "fp32", "ratio": 0.375}
    assert run["settled"]["phase"] == "settled"
    assert {(m["model"], m["ratio"]): m["ms"] for m in run["measured"]} == {
        (model, ratio): TIMES[f"wasm {model} {ratio:g}"]
        for model in ("int8", "fp32")
        for ratio in (1, 0.5, 0.375)
    }
    # A user's ratio is the only one measured.
    fixed = drive(page, TIMES, ratios=[0.5])
    assert fixed["visited"] == ["wasm int8 0.5", "wasm fp32 0.5"]
    assert fixed["settled"]["chosen"]["ratio"] == 0.5
    assert "out of reach" in fixed["settled"]["reason"]


def test_the_plan_hands_over_or_settles_when_nothing_keeps_up(
    tab_server: RunningServer, page: Any
) -> None:
    page.goto(f"{tab_server.http}/")
    slow = {key: ms * 4 for key, ms in TIMES.items()}
    auto = drive(page, slow, fallback=True)
    assert auto["settled"]["verdict"] == "server"
    assert "too slow" in auto["settled"]["reason"]
    tab = drive(page, slow)
    # Tab mode runs the fastest thing it measured, and says the rate is out of reach.
    assert tab["settled"]["chosen"] == {"backend": "wasm", "model": "fp32", "ratio": 0.25}
    assert "out of reach" in tab["settled"]["reason"]
    assert "wasm fp32 0.25" in tab["visited"]


def test_the_plan_measures_a_lower_ratio_when_it_falls_behind(
    tab_server: RunningServer, page: Any
) -> None:
    page.goto(f"{tab_server.http}/")
    # Settled at 0.375, then frames come every 150 ms (6.7 fps < 90% of 15): the next ratio
    # down is measured; in auto, at the bottom of the ladder, the server takes over.
    run = drive(page, TIMES, behind_ms=150)
    assert run["later"]["phase"] == "measuring"
    assert run["later"]["current"]["ratio"] == 0.25
    assert "fell behind" in run["later"]["reason"]
    bottom = drive(page, TIMES, behind_ms=150, ratios=[0.25], fallback=True)
    assert bottom["later"]["verdict"] == "server"
    assert "fell behind" in bottom["later"]["reason"]


def test_a_candidate_that_cannot_run_is_dropped(tab_server: RunningServer, page: Any) -> None:
    page.goto(f"{tab_server.http}/")
    candidates = [{"backend": "webgpu", "model": "int8"}, *CANDIDATES]
    times = {**TIMES, **{f"webgpu int8 {r:g}": "fail" for r in LADDER}}
    run = drive(page, times, candidates=candidates)
    assert run["failed"] == [{"backend": "webgpu", "model": "int8", "error": "no session"}]
    assert run["settled"]["chosen"] == {"backend": "wasm", "model": "fp32", "ratio": 0.375}
    assert not any(m["backend"] == "webgpu" for m in run["measured"])
    only = drive(page, times, candidates=candidates[:1])
    assert only["settled"]["verdict"] == "server"
    assert "cannot matte" in only["settled"]["reason"]


CHOOSE = """
async ([wanted, gpu]) => {
  const { chooseBackends } = await import("/tab.js");
  const stub = {
    none: null,
    no_adapter: { requestAdapter: async () => null },
    throws: { requestAdapter: async () => { throw new Error("device lost"); } },
    adapter: { requestAdapter: async () => ({}) },
  }[gpu];
  return chooseBackends(wanted, stub);
}
"""


@pytest.mark.parametrize(
    ("wanted", "gpu", "backends", "why"),
    [
        (None, "none", ["wasm"], "no WebGPU"),
        (None, "no_adapter", ["wasm"], "no adapter"),
        (None, "throws", ["wasm"], "WebGPU failed: device lost"),
        (None, "adapter", ["webgpu", "wasm"], "adapter found"),
        ("webgpu", "no_adapter", ["wasm"], "no adapter"),
        ("webgpu", "adapter", ["webgpu"], "asked for"),
        ("wasm", "adapter", ["wasm"], "asked for"),
    ],
)
def test_webgpu_where_there_is_an_adapter_else_wasm(
    tab_server: RunningServer,
    page: Any,
    wanted: str | None,
    gpu: str,
    backends: list[str],
    why: str,
) -> None:
    page.goto(f"{tab_server.http}/")
    chosen = page.evaluate(CHOOSE, [wanted, gpu])
    assert chosen["backends"] == backends
    assert why in chosen["why"]


WEBGPU_BUILD = """
async (version) => {
  const { TabMatter } = await import("/tab.js");
  const matter = await TabMatter.load(["webgpu", "wasm"]);
  const image = new ImageData(64, 48);
  image.data.fill(128);
  const alpha = await matter.matte(image, { backend: "wasm", model: version, ratio: 0.5 });
  let webgpu;
  try {
    await matter.session({ backend: "webgpu", model: version, ratio: 0.5 });
    webgpu = "created";
  } catch (err) {
    webgpu = String(err.message || err);
  }
  const adapter = !!(await navigator.gpu?.requestAdapter());
  return { pixels: alpha.length, webgpu, adapter };
}
"""


def test_the_webgpu_build_loads_and_runs_wasm_beside_it(
    tab_server: RunningServer, page: Any
) -> None:
    """The vendored WebGPU build (what a browser with a GPU loads) imports, mattes with its
    WASM provider, and its WebGPU session is created only where there is an adapter: here,
    without one, it fails with an error the plan drops the candidate for."""
    page.goto(f"{tab_server.http}/")
    run = page.evaluate(WEBGPU_BUILD, VERSION)
    assert run["pixels"] == 64 * 48
    if run["adapter"]:
        assert run["webgpu"] == "created"
    else:
        assert run["webgpu"] != "created", run
        assert run["webgpu"], run
