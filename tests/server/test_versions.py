"""Model versions through the server: the embedded default build, quantized parity with
`ptq4vm matte`, sessions pinned to their version (DESIGN 4.3.7, 4.4)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.engine.cpu import default_int8_target
from tests.server.client import decode_png
from tests.server.conftest import (
    BUILD_TIMEOUT_S,
    Assets,
    DefaultBuild,
    ServerFactory,
    cli_mattes,
    make_home,
    png_dir,
)
from tests.server.test_registry import corrupt
from tests.server.test_stream_errors import START, expect_error_then_close, raw


def test_embedded_default_starts_in_the_background(
    start_server: ServerFactory, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """An empty registry: FP32 serves at once while the build runs (stopped with the server)."""
    server = start_server(build_default=True, default_method="minmax", default_profile="fast")
    with server.client() as http:
        build = http.get("/readyz").json()["default_model"]
        assert (build["state"], build["method"], build["profile"]) == ("running", "minmax", "fast")
        assert http.get("/v1/models").json()["active"] == "fp32"
        assert 'ptq4vm_default_model_build{state="running"} 1.0' in http.get("/metrics").text
    with server.stream(input="rgb24") as stream:
        assert stream.started["model"] == "fp32"
        stream.matte(clip_rgb[0].tobytes())
    pid = server.services.default_builder.child_pid
    assert pid is not None  # the calibration subprocess is running
    deadline = time.monotonic() + 30  # its priority is lowered as it starts
    while os.getpriority(os.PRIO_PROCESS, pid) < 10:
        assert time.monotonic() < deadline, "the build does not run at low priority"
        time.sleep(0.1)


def test_default_build_reports_stage_and_progress(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """While the default model builds, /readyz says which stage it is in and how far it is
    (from the child's typed events), and the log says so too."""
    caplog.set_level(logging.INFO, logger="server.calibration.default_build")
    server = start_server(build_default=True, default_method="minmax", default_profile="fast")
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with server.client() as http:
        while True:
            ready = http.get("/readyz")
            build = ready.json()["default_model"]
            seen.append(build)
            if build["state"] != "running" or build["stage"] not in (None, "prepare"):
                break
            assert time.monotonic() < deadline, build
            time.sleep(0.2)
    assert ready.status_code == 200  # fp32 serves meanwhile
    assert build["state"] in ("running", "done"), build
    assert build["stage"] in ("biq", "done"), build  # MinMax calibrates in the BIQ stage
    assert 0 < build["progress"] <= 1
    fractions = [b["progress"] for b in seen if b["progress"] is not None]
    assert fractions == sorted(fractions)
    assert all(0 <= f <= 1 for f in fractions)
    assert seen[0]["stage"] in (None, "prepare")
    lines = [r.getMessage() for r in caplog.records if r.name == "server.calibration.default_build"]
    assert any(re.fullmatch(r"default build: biq, \d+% done.*", line) for line in lines), lines


def test_no_default_build_with_a_model_or_versions(
    start_server: ServerFactory, versions_home: Path
) -> None:
    for server in (
        start_server(build_default=True, model="fp32"),
        start_server(versions_home, build_default=True),
    ):
        assert server.services.default_builder.state.value == "off"


@pytest.mark.slow
def test_embedded_default_builds_and_activates(default_build: DefaultBuild) -> None:
    assert default_build.states[0] == "running"
    assert default_build.states[-1] == "done"
    # While it built, sessions were served by FP32 at once.
    assert default_build.models_during_build
    assert set(default_build.models_during_build) == {"fp32"}
    assert default_build.version.startswith("ptq4vm-w8a8-")
    assert default_build.build_info["method"] == "minmax"
    # /readyz followed the build: progress never went back, and it ended done at 1.
    fractions = [f for _, f in default_build.progress if f is not None]
    assert fractions == sorted(fractions)
    assert {stage for stage, _ in default_build.progress} >= {"biq", "done"}
    info = default_build.build_info
    assert (info["stage"], info["progress"], info["eta_s"]) == ("done", 1.0, 0.0)
    manifest = json.loads((default_build.artifact / "manifest.json").read_text())
    assert manifest["bits"] == "w8a8"
    assert manifest["profile"] == "fast"
    # Built for this CPU's int8 kernels, and activated only where faster (both figures given).
    assert manifest["int8_target"] == info["int8_target"] == default_int8_target().value
    speed = info["speed"]
    assert speed["incumbent_version"] == "fp32"
    assert info["activated"] is (speed["candidate_fps"] > speed["incumbent_fps"])
    assert f"{speed['candidate_fps']:.1f} fps" in info["decision"]
    assert f"{speed['incumbent_fps']:.1f} fps" in info["decision"]
    assert not list((default_build.home / "models").glob(".default-build-*"))


@pytest.fixture
def versions_home(tmp_path: Path, assets: Assets, quantized_artifact: Path) -> Path:
    """A registry of its own with the quantized artifact as v1 and v2, none active."""
    home = make_home(tmp_path / "home", assets)
    for name in ("v1", "v2"):
        shutil.copytree(quantized_artifact, home / "models" / name)
    return home


def test_quantized_lockstep_matches_ptq4vm_matte(
    start_server: ServerFactory,
    versions_home: Path,
    clip_rgb: list[NDArray[np.uint8]],
    tmp_path: Path,
) -> None:
    frames = clip_rgb[:8]
    clip_dir = png_dir(frames, tmp_path / "clip")
    expected = cli_mattes(clip_dir, "v1", tmp_path, home=versions_home)
    server = start_server(versions_home)
    with server.stream(input="png", model="v1") as stream:
        assert stream.started["model"] == "v1"
        for seq, frame in enumerate(frames):
            _, data = cv2.imencode(".png", frame[..., ::-1])
            meta, payload = stream.matte(data.tobytes())
            assert meta["model"] == "v1"
            np.testing.assert_array_equal(decode_png(payload), expected[seq], f"frame {seq}")


def test_open_session_keeps_its_version_when_another_is_activated(
    start_server: ServerFactory, versions_home: Path, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    server = start_server(versions_home, max_idle_models=0)
    registry = server.services.registry
    registry.activate("v1")

    def models(stream: Any, frames: range) -> set[str]:
        return {stream.matte(clip_rgb[i].tobytes())[0]["model"] for i in frames}

    with server.stream(input="rgb24") as old:
        assert old.started["model"] == "v1"
        assert models(old, range(1)) == {"v1"}
        registry.activate("v2")
        assert models(old, range(1, 2)) == {"v1"}
        assert "v1" in registry.loaded()  # pinned by the open session
        with server.stream(input="rgb24") as new:
            assert new.started["model"] == "v2"
            assert models(new, range(1)) == {"v2"}
        assert models(old, range(2, 3)) == {"v1"}
        # A reset ends the old state: the session moves to the active version.
        old.send_json({"type": "reset"})
        meta, _ = old.matte(clip_rgb[0].tobytes())
        assert (meta["model"], meta["fresh"]) == ("v2", True)
        old.stop()
    assert "v1" not in registry.loaded()


def test_corrupt_version_is_refused_and_others_stream(
    start_server: ServerFactory, versions_home: Path
) -> None:
    corrupt(versions_home / "models" / "v2")
    server = start_server(versions_home)
    with server.stream(input="rgb24", model="v1") as good:
        with raw(server) as ws:
            ws.send(json.dumps({**START, "model": "v2"}))
            message = expect_error_then_close(ws, "model_unavailable", 1011)
            assert "sha256" in message["message"]
        assert good.matte(b"\x00" * 176 * 144 * 3)[0]["model"] == "v1"
    with server.client() as http:
        rows = {r["version"]: r for r in http.get("/v1/models").json()["versions"]}
    assert set(rows) == {"fp32", "v1", "v2"}


def test_a_corrupt_active_version_falls_back_to_fp32(
    start_server: ServerFactory, versions_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (versions_home / "models" / "active.json").write_text(json.dumps({"version": "v2"}))
    corrupt(versions_home / "models" / "v2")
    server = start_server(versions_home)
    with server.stream(input="rgb24") as stream:
        assert stream.started["model"] == "fp32"
    assert "active model v2 cannot be served" in caplog.text
