"""The browser client end to end in Firefox: Debian's firefox-esr, headless, driven over its
built-in Marionette server (Mozilla's `marionette_driver` client; no geckodriver), with
Firefox's fake camera against a real server serving clients/web at `/`.

Firefox's fake camera is a synthetic picture whose colour drifts over time, not the sample
clip, so the test does not compare with the clip: it reads the camera frame in the page at
the moment it reads the composite, picks a background colour far from that frame's colour,
and checks that the composite's corner is that colour while the camera's corner is not.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clients.test_browser import ARTIFACTS, WEB, debian_browser, decode_data_url
from tests.net import free_port
from tests.server.conftest import ServerFactory

COLOURS = {"#0000ff": (0, 0, 255), "#ff0000": (255, 0, 0), "#00ff00": (0, 255, 0)}
# No network beyond the test server: no first-run pages, updates, telemetry or probes.
PREFS: dict[str, Any] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "toolkit.telemetry.reporting.enabled": False,
    "toolkit.telemetry.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "browser.search.update": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "network.proxy.type": 0,
}


def firefox_path() -> str:
    return debian_browser("firefox-esr", "firefox-esr", "firefox")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until Marionette listens (marionette_driver's own wait leaks a socket per failed try,
    an error under this suite's warning filter, so it gets a port already open)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"firefox exited with {process.returncode} before Marionette listened")
            if time.monotonic() > deadline:
                pytest.fail(f"firefox's Marionette did not listen on port {port} in {timeout} s")
            time.sleep(0.1)


@contextmanager
def firefox(executable: str, profile: Path) -> Iterator[Any]:
    """A headless Firefox on a fresh profile, and a Marionette session on it."""
    # marionette_driver imports mozinfo, which calls the deprecated
    # distro.linux_distribution() at import time (the suite turns warnings into errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from marionette_driver.marionette import Marionette

    port = free_port()
    profile.mkdir()
    prefs = {**PREFS, "marionette.port": port}
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
    )
    log = (profile.parent / "firefox.log").open("wb")
    process = subprocess.Popen(
        [executable, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = None
    try:
        wait_for_port(port, process)
        client = Marionette(host="127.0.0.1", port=port)
        client.start_session(timeout=30)
        yield client
    finally:
        if client is not None and client.session is not None:
            client.delete_session()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def js(client: Any, script: str) -> Any:
    """Run in the page's own scope (Marionette's default sandbox does not see window.ptq4vm)."""
    return client.execute_script(script, sandbox=None)


def wait_for(client: Any, script: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not js(client, f"return Boolean({script});"):
        if time.monotonic() > deadline:
            state = js(client, "return JSON.stringify(window.ptq4vm);")
            pytest.fail(f"timed out waiting for {script}; page state: {state}")
        time.sleep(0.2)


def page_state(client: Any) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(js(client, "return JSON.stringify(window.ptq4vm);"))
    return state


@pytest.mark.browser
def test_page_streams_the_fake_camera_and_composites_in_firefox(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    executable = firefox_path()
    server = start_server(static_dir=WEB)
    with firefox(executable, tmp_path / "profile") as client:
        client.navigate(f"{server.http}/")
        js(
            client,
            """
            document.querySelector('input[name="background"][value="colour"]').click();
            document.getElementById('max-side').value = '176';
            document.getElementById('start').click();
            """,
        )
        wait_for(client, "window.ptq4vm.mattes >= 5")
        first = page_state(client)
        assert first["state"] == "streaming", first
        assert first["model"] == "fp32"
        assert js(client, "return document.getElementById('model').textContent;") == "fp32"
        # Firefox's fake camera is 640x480: "Max side" 176 gives 176x132.
        assert (first["width"], first["height"]) == (176, 132), first

        # A dropped connection: a visible state, then a resume of the same session.
        js(client, "window.ptq4vm.dropConnection();")
        wait_for(client, "document.body.dataset.state === 'disconnected'", timeout=10)
        status = js(client, "return document.getElementById('status').textContent;")
        assert "retrying" in status
        wait_for(client, f"window.ptq4vm.mattes >= {first['mattes'] + 3}")
        after = page_state(client)
        assert after["state"] == "streaming", after
        assert after["session"] == first["session"]
        assert after["reconnects"] == 1

        # A background colour far from what the camera shows now, then a few more mattes.
        camera_url = """
            const video = document.getElementById('video');
            const canvas = document.createElement('canvas');
            canvas.width = window.ptq4vm.width; canvas.height = window.ptq4vm.height;
            canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
            return canvas.toDataURL('image/png');
        """
        camera = decode_data_url(js(client, camera_url))
        corner = (slice(0, 12), slice(0, 12))
        seen = camera[corner].reshape(-1, 3).astype(int).mean(axis=0)
        colour = max(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - seen).max())
        js(client, f"document.getElementById('bg-colour').value = '{colour}';")
        wait_for(client, f"window.ptq4vm.mattes >= {after['mattes'] + 3}")
        composite = decode_data_url(
            js(client, "return document.getElementById('output').toDataURL('image/png');")
        )
        camera = decode_data_url(js(client, camera_url))
        (tmp_path / "browser-client-firefox.png").write_bytes(
            client.screenshot(format="binary", full=True)
        )
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "browser-client-firefox.png", ARTIFACTS / "browser-client-firefox.png")

    # Firefox's fake picture has no person: its corner is background, the chosen colour in the
    # composite and not in the camera frame.
    want = np.array(COLOURS[colour])
    drawn = composite[corner].reshape(-1, 3).astype(int).mean(axis=0)
    source = camera[corner].reshape(-1, 3).astype(int).mean(axis=0)
    assert composite.shape[:2] == (after["height"], after["width"])
    assert np.abs(drawn - want).max() < 60, (colour, drawn)
    assert np.abs(drawn - source).max() > 100, (drawn, source)
