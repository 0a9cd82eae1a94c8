"""The page's "webrtc" mode (DESIGN 4.5, 4.6) in headless Chromium (Debian's): the fake camera,
fed from the sample clip, published to a real server over WHIP; the composite track the
server returns is what the page shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.io.y4m import write_y4m
from tests.clients.test_browser import WEB, chromium_path, fake_camera_args
from tests.server.conftest import RunningServer, ServerFactory

FRAMES = 20
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def webrtc_server(start_server: ServerFactory) -> RunningServer:
    return start_server(static_dir=WEB)


@pytest.fixture(scope="module")
def camera(clip_rgb: list[NDArray[np.uint8]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(clip_rgb, tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest.fixture
def page(camera: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Plain host candidates: aiortc's ICE would have to resolve mDNS names otherwise.
    args = fake_camera_args(camera, "--disable-features=WebRtcHideLocalIpsWithMdns")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_webrtc_mode_shows_the_composite_the_server_sends_back(
    webrtc_server: RunningServer, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{webrtc_server.http}/?mode=webrtc")
    page.check('input[name="background"][value="colour"]')
    page.eval_on_selector("#bg-colour", "el => { el.value = '#0000ff'; }")
    page.click("#start")
    page.wait_for_function(f"window.ptq4vmStats.frames >= {FRAMES}", timeout=TIMEOUT_MS)
    seen: dict[str, Any] = page.evaluate("({...window.ptq4vmStats})")
    assert seen["mode"] == "webrtc"
    assert seen["requested"] == "webrtc"
    assert seen["model"] == "fp32"
    assert seen["fps"] > 0
    assert seen["latency_ms"] > 0
    assert page.text_content("#mode-now") == "server (WebRTC)"
    assert len(webrtc_server.services.whip) == 1
    shot = tmp_path / "composite.png"
    page.locator("#output").screenshot(path=str(shot))
    bgr = cv2.imread(str(shot))
    assert bgr is not None
    image = bgr[..., ::-1]  # RGB
    corner = image[:12, :12].reshape(-1, 3).mean(axis=0)  # background in the sample clip
    assert corner[2] > 150, corner  # the server's composite over blue
    assert max(corner[0], corner[1]) < 90, corner
    assert image.std() > 10  # a person in front of it, not a blank canvas
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=10_000)
    deadline = page.evaluate("Date.now()") + 5000
    while len(webrtc_server.services.whip) and page.evaluate("Date.now()") < deadline:
        page.wait_for_timeout(100)
    assert len(webrtc_server.services.whip) == 0  # Stop sent the DELETE
