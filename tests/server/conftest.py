"""Real servers for the integration tests: uvicorn in a thread on a loopback port, each with
its own temporary PTQ4VM_HOME that links the real weights and sample clip.

`quantized_artifact` is one real (tiny) calibration shared by the session; `default_build`
runs the embedded default build end to end (a real `ptq4vm calibrate` subprocess, MinMax with
the fast profile), for the slow test only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import torch
import uvicorn
from numpy.typing import NDArray
from typer.testing import CliRunner

from ptq4vm_core.artifact import save_artifact
from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP
from ptq4vm_core.calib.calibrate import calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.cli.main import app as cli
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.model import load_rvm_from_onnx
from server.main import uvicorn_config
from server.services import Services
from server.settings import Settings
from server.web.app import create_app
from tests.net import LoopbackUrls
from tests.server.client import Stream

REFERENCE_FRAMES = 30
BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class Assets:
    """The real weights and clip (fetched once into the user's cache), and one exported-engine
    cache for the whole test session (exports are keyed by content, so homes can share it)."""

    weights: Path
    clip: Path
    engines: Path


def make_home(root: Path, assets: Assets) -> Path:
    """A PTQ4VM_HOME with the real weights, clip and the shared engine cache linked in."""
    for asset, source in ((RVM_WEIGHTS, assets.weights), (SAMPLE_CLIP, assets.clip)):
        target = asset.path(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    (root / "engines").symlink_to(assets.engines, target_is_directory=True)
    return root


def settings_for(home: Path, **overrides: Any) -> Settings:
    """Settings for a test server: the default build and the speed check before activation off
    unless asked for (the check at a small size, to be quick, where it is on)."""
    values: dict[str, Any] = {
        "home": home,
        "port": 0,
        "build_default": False,
        "speed_check": False,
        "speed_check_size": "176x144",
        "speed_check_frames": 5,
        "speed_check_rounds": 1,
    }
    values.update(overrides)
    return Settings(**values)


class RunningServer(LoopbackUrls):
    """A uvicorn server in a thread, serving `create_app(settings)` on 127.0.0.1."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn_config(self.app, settings, port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.http, timeout=60)

    def stream(self, **start: Any) -> Stream:
        return Stream(self.ws, **start)

    def start(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self._sock.close()


ServerFactory = Callable[..., RunningServer]


@pytest.fixture(scope="session")
def assets(
    weights_file: Path, sample_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Assets:
    return Assets(weights_file, sample_clip, tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def start_server(
    tmp_path_factory: pytest.TempPathFactory, assets: Assets
) -> Iterator[ServerFactory]:
    """`start_server(**settings)`: a new server on a fresh home, stopped with the module."""
    servers: list[RunningServer] = []

    def start(home: Path | None = None, **overrides: Any) -> RunningServer:
        home = home or make_home(tmp_path_factory.mktemp("home"), assets)
        server = RunningServer(settings_for(home, **overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(start_server: ServerFactory) -> RunningServer:
    """The module's shared server: FP32, default limits, the default build off."""
    return start_server()


@pytest.fixture(scope="session")
def clip_rgb(clip_frames: list[NDArray[np.uint8]]) -> list[NDArray[np.uint8]]:
    return clip_frames[:REFERENCE_FRAMES]


@pytest.fixture(scope="session")
def fp32_reference(
    tmp_path_factory: pytest.TempPathFactory, clip_rgb: list[NDArray[np.uint8]]
) -> list[NDArray[np.uint8]]:
    """`ptq4vm matte --model fp32` on the sample clip's first REFERENCE_FRAMES frames (as a
    directory of PNGs: the same pixels as the decoded video, a quarter of the work)."""
    out = tmp_path_factory.mktemp("ref-fp32")
    return cli_mattes(png_dir(clip_rgb, out / "clip"), "fp32", out)


def png_dir(frames: list[NDArray[np.uint8]], path: Path) -> Path:
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(path / f"{i:04d}.png"), frame[..., ::-1])
    return path


def cli_mattes(
    clip: Path, model: str, out: Path, home: Path | None = None
) -> list[NDArray[np.uint8]]:
    """`ptq4vm matte CLIP --model MODEL --alpha-out` (with PTQ4VM_HOME=home when given)."""
    env = None if home is None else {"PTQ4VM_HOME": str(home)}
    result = CliRunner().invoke(
        cli, ["matte", str(clip), "--model", model, "--alpha-out", str(out / "alpha")], env=env
    )
    assert result.exit_code == 0, result.output
    return [
        f[..., 0] for f, _ in zip(iter_frames(out / "alpha"), range(REFERENCE_FRAMES), strict=False)
    ]


@dataclass
class DefaultBuild:
    """What the embedded default build did, observed from outside."""

    home: Path
    version: str
    artifact: Path
    seconds: float
    states: list[str] = field(default_factory=list)
    progress: list[tuple[str | None, float | None]] = field(default_factory=list)
    models_during_build: list[str] = field(default_factory=list)
    build_info: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def default_build(
    tmp_path_factory: pytest.TempPathFactory, assets: Assets, clip_rgb: list[Any]
) -> Iterator[DefaultBuild]:
    """A server on an empty registry with the default build on (MinMax, fast profile) and the
    speed check: streams FP32 while it builds, then registers the W8A8 model for this CPU's
    class and activates it where it is faster here."""
    home = make_home(tmp_path_factory.mktemp("default-home"), assets)
    settings = settings_for(
        home, build_default=True, default_method="minmax", default_profile="fast",
        speed_check=True,
    )  # fmt: skip
    server = RunningServer(settings).start()
    started = time.monotonic()
    states: list[str] = []
    progress: list[tuple[str | None, float | None]] = []
    models: list[str] = []
    try:
        with server.client() as http:
            while time.monotonic() - started < BUILD_TIMEOUT_S:
                info = http.get("/readyz").json()["default_model"]
                states.append(info["state"])
                progress.append((info["stage"], info["progress"]))
                if info["state"] != "running":
                    break
                if len(models) < 3:  # sessions get FP32 at once, while the build runs
                    with server.stream(width=176, height=144, input="rgb24") as stream:
                        models.append(stream.started["model"])
                        stream.matte(clip_rgb[0].tobytes())
                time.sleep(1.0)
            registry = http.get("/v1/models").json()
        assert info["state"] == "done", info
        version = info["version"]
        assert registry["active"] == (version if info["activated"] else "fp32"), info
        yield DefaultBuild(
            home=home,
            version=version,
            artifact=home / "models" / version,
            seconds=time.monotonic() - started,
            states=states,
            progress=progress,
            models_during_build=models,
            build_info=info,
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def quantized_artifact(
    tmp_path_factory: pytest.TempPathFactory, weights_file: Path, sample_clip: Path
) -> Path:
    """A real W8A8 artifact made quickly: MinMax on 4 frames at 64 px. The registry and the
    server only need a genuine artifact, not a good one (the default build makes a real one,
    in the slow test)."""
    data = build_calibration_set([sample_clip], frames=4, seq_len=2, max_side=64)
    # One torch thread: these tiny convolutions gain nothing from more, and on a busy machine
    # spinning intra-op threads made this 10x slower (98 s against 10 s, measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = calibrate(
            load_rvm_from_onnx(weights_file),
            data,
            bits="w8a8",
            method=Method.MINMAX,
            profile=Profile.FAST,
            progress=lambda event: None,
        )
    finally:
        torch.set_num_threads(threads)
    return save_artifact(
        result, data, tmp_path_factory.mktemp("artifact") / "tiny-w8a8", name="tiny-w8a8"
    )
