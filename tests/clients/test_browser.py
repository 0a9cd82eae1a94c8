"""The browser client end to end: headless Chromium (Debian's, driven by Playwright) with a
fake camera fed from the sample clip, against a real server serving clients/web at `/`."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.io.y4m import write_y4m
from tests.server.conftest import ServerFactory

WEB = Path(__file__).parents[2] / "clients" / "web"
ARTIFACTS = Path(__file__).parents[1] / "artifacts"
BLUE = "#0000ff"


def fake_camera_args(camera: Path, *extra: str) -> list[str]:
    """Chromium's arguments for a fake camera playing `camera` (a Y4M file), permission given."""
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        *extra,
        "--no-sandbox",  # CI containers run as root
    ]


def debian_browser(package: str, *names: str) -> str:
    """The first of `names` on PATH; failing that, how to install Debian's `package`."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        f"Debian's {package} is not installed: run `make setup` (it runs "
        f"`apt-get install -y {package}` as root) or deselect with `-m 'not browser'`"
    )


def chromium_path() -> str:
    return debian_browser("chromium", "chromium", "chromium-browser")


def decode_data_url(url: str) -> NDArray[np.uint8]:
    png = base64.b64decode(url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "the canvas did not give a PNG"
    return np.ascontiguousarray(np.asarray(bgr, np.uint8)[..., ::-1])


@pytest.mark.browser
def test_page_streams_the_camera_and_composites(
    start_server: ServerFactory, clip_rgb: list[NDArray[np.uint8]], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    server = start_server(static_dir=WEB)
    camera = write_y4m(clip_rgb, tmp_path / "camera.y4m")
    args = fake_camera_args(camera)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(f"{server.http}/")
            page.check('input[name="background"][value="colour"]')
            page.fill("#bg-colour", BLUE)
            page.click("#start")
            page.wait_for_function("window.ptq4vm.mattes >= 5", timeout=60_000)
            first = page.evaluate("({...window.ptq4vm})")
            assert first["state"] == "streaming"
            assert first["model"] == "fp32"
            assert page.text_content("#model") == "fp32"
            assert (first["width"], first["height"]) == (176, 144)

            # A dropped connection: a visible state, then a resume of the same session.
            page.evaluate("window.ptq4vm.dropConnection()")
            page.wait_for_function("document.body.dataset.state === 'disconnected'")
            assert "retrying" in (page.text_content("#status") or "")
            target = first["mattes"] + 5
            page.wait_for_function(f"window.ptq4vm.mattes >= {target}", timeout=60_000)
            after = page.evaluate("({...window.ptq4vm})")
            assert after["state"] == "streaming"
            assert after["session"] == first["session"]
            assert after["reconnects"] == 1

            composite = decode_data_url(
                page.evaluate("document.getElementById('output').toDataURL('image/png')")
            )
            page.screenshot(path=str(tmp_path / "browser-client.png"), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "browser-client.png", ARTIFACTS / "browser-client.png")

    # The clip's top-left corner is background: blue in the composite, not in the input.
    corner = (slice(0, 12), slice(0, 12))
    drawn = composite[corner].reshape(-1, 3).astype(int).mean(axis=0)
    source = clip_rgb[0][corner].reshape(-1, 3).astype(int).mean(axis=0)
    assert drawn[2] > 200, drawn
    assert drawn[:2].max() < 60, drawn
    assert np.abs(drawn - source).max() > 100, (drawn, source)
    # The person (centre) is kept: not the background colour.
    centre = composite[60:90, 75:105].reshape(-1, 3).astype(int).mean(axis=0)
    assert not (centre[2] > 200 and centre[:2].max() < 60), centre
