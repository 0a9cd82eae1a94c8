"""The page's "this tab" and "auto" modes (DESIGN 4.5) in headless Chromium (Debian's), with a
fake camera fed from the sample clip, against a real server whose active version is a real
W8A8 artifact: the tab runs that version's exported int8 graph in onnxruntime-web."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.clients.test_browser import WEB, chromium_path, write_y4m
from tests.server.conftest import RunningServer, ServerFactory

VENDORED = WEB / "vendor" / "onnxruntime-web" / "ort.wasm.min.mjs"
VERSION = "tab-w8a8"
FRAMES = 30
TIMEOUT_MS = 180_000

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


@pytest.fixture
def page(camera: Path, sockets: Sockets) -> Iterator[Any]:
    """A Chromium page whose camera plays the clip, its WebSockets watched by `sockets`."""
    from playwright.sync_api import sync_playwright

    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        "--no-sandbox",  # CI containers run as root
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            page = browser.new_page()
            page.on("websocket", sockets.watch)
            yield page
        finally:
            browser.close()


def stats(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("({...window.ptq4vmStats})")
    return result


def test_tab_mode_mattes_without_the_websocket(
    tab_server: RunningServer, page: Any, sockets: Sockets
) -> None:
    page.goto(f"{tab_server.http}/?mode=tab&autostart")
    page.wait_for_function(f"window.ptq4vmStats.frames >= {FRAMES}", timeout=TIMEOUT_MS)
    seen = stats(page)
    assert seen["mode"] == "tab"
    assert seen["requested"] == "tab"
    assert seen["model"] == VERSION
    assert seen["fps"] > 0
    assert seen["latency_ms"] > 0
    assert page.evaluate("self.crossOriginIsolated"), "no COOP/COEP: WASM threads are off"
    assert seen["threads"] >= 1
    assert page.text_content("#mode-now") == "this tab"
    assert page.text_content("#model") == VERSION
    assert sockets.urls == []
    assert sockets.frames_sent == 0
    assert page.evaluate("window.ptq4vm.sent") == 0


def test_tab_mattes_match_the_server(tab_server: RunningServer, page: Any) -> None:
    """The frames the tab matted (as it saw them) streamed to the server with the same version
    and ratio, and a reset where the tab saw a scene cut: the mattes agree within 2/255 on
    average, frame by frame."""
    page.goto(f"{tab_server.http}/?mode=tab&autostart&record={FRAMES}")
    page.wait_for_function(
        f"window.ptq4vm.recording?.frames.length >= {FRAMES}", timeout=TIMEOUT_MS
    )
    recording = page.evaluate("window.ptq4vm.exportRecording()")
    width, height = recording["width"], recording["height"]
    ratio = recording["frames"][0]["ratio"]
    assert (width, height, ratio) == (176, 144, 1.0)
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
    page.goto(f"{tab_server.http}/?mode=auto&fps=15&autostart")
    # Throttled from the tab's first matte on (the warm-up is measured from there): loading the
    # runtime and the model unthrottled keeps the test short.
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
