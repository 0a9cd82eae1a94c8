"""A real Ray cluster on this machine for the batch tests: a head node and a second node
(`ray start --block`, one CPU each, so two actors run on two raylets), and tiny clips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ptq4vm_core.io.evalclip import moving_background
from ptq4vm_core.io.video import open_writer
from tests.net import free_port
from tests.server.conftest import (  # noqa: F401  (fixtures, registered by import)
    assets,
    start_server,
)

RAY = Path(sys.executable).with_name("ray")
# Token authentication would make every client find the cluster's token; this cluster is
# on one machine for one test session.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
WIDTH, HEIGHT = 64, 48


def write_clip(path: Path, frames: int, seed: int) -> Path:
    """A moving square over a panning background: [48,64,3] frames, MP4 or a PNG dir."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3)
    with open_writer(path, "rgb", width=WIDTH, height=HEIGHT, fps=Fraction(25)) as writer:
        for index in range(frames):
            frame = moving_background(
                "blobs" if seed % 2 else "stripes", index + seed, WIDTH, HEIGHT
            )
            x = 8 + (index * 2) % 30
            frame[10:40, x : x + 20] = colour
            writer.write(frame)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "a": write_clip(root / "a.mp4", 8, 1),
        "b": write_clip(root / "b.mp4", 6, 2),
        "c": write_clip(root / "c", 5, 3),  # a frame directory
        "long": write_clip(root / "long.mp4", 40, 4),
    }


def _start_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **RAY_ENV}
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_for_cpus(address: str, cpus: float, timeout_s: float = 60.0) -> None:
    ray = pytest.importorskip("ray")
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while ray.cluster_resources().get("CPU", 0) < cpus:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster at {address} never had {cpus} CPUs")
            time.sleep(0.25)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a two-node cluster on 127.0.0.1 (stopped at the end of the session)."""
    pytest.importorskip("ray")
    logs = tmp_path_factory.mktemp("ray-logs")
    port = free_port()
    address = f"127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    common = ["--num-cpus=1", "--object-store-memory=100000000"]
    head = _start_node(
        ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
         *common],
        logs / "head.log",
    )  # fmt: skip
    nodes = [head]
    try:
        time.sleep(2.0)
        nodes.append(
            _start_node([f"--address={address}", "--node-ip-address=127.0.0.1", *common],
                        logs / "worker.log")
        )  # fmt: skip
        _wait_for_cpus(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            node.terminate()
        for node in reversed(nodes):
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, 9)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ray_client(ray_cluster: str) -> Iterator[str]:
    """This process connected to the cluster (run_batch then reuses the connection)."""
    ray = pytest.importorskip("ray")
    ray.init(address=ray_cluster, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray_cluster
    finally:
        ray.shutdown()


def copy_tree(source: Path, target: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target
