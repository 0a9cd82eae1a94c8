"""`ptq4vm serve` as users run it: a subprocess on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.net import free_port
from tests.server.conftest import Assets, make_home


def serve(home: Path, *args: str, **extra_env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PTQ4VM_HOME": str(home), "PTQ4VM_BUILD_DEFAULT": "false", **extra_env}
    return subprocess.Popen(
        [sys.executable, "-m", "ptq4vm_core.cli", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_answers_then_stops_cleanly(tmp_path: Path, assets: Assets) -> None:
    home = make_home(tmp_path / "home", assets)
    port = free_port()
    proc = serve(home, "--port", str(port), "--model", "fp32")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ptq4vm serve did not become ready"
            time.sleep(0.2)
        assert ready.json()["model"] == "fp32"
    finally:
        proc.send_signal(2)  # Ctrl-C
        output = proc.communicate(timeout=60)[0]
    # uvicorn shuts down gracefully, then re-raises the signal: 130 is Ctrl-C's exit status.
    assert proc.returncode in (0, 130), output
    assert f"serving on http://127.0.0.1:{port}" in output
    assert "Application shutdown complete" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--model", "w9a9"], "unknown model 'w9a9'"), (["--port", "70000"], "port")],
)
def test_serve_refuses_bad_options(
    tmp_path: Path, assets: Assets, args: list[str], message: str
) -> None:
    proc = serve(make_home(tmp_path / "home", assets), *args)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, output
    assert message in output
    assert "Traceback" not in output


def test_serve_refuses_a_bad_int8_precision_setting(tmp_path: Path, assets: Assets) -> None:
    proc = serve(
        make_home(tmp_path / "home", assets), "--port", str(free_port()),
        PTQ4VM_INT8_FLOAT_PRECISION="fp16",
    )  # fmt: skip
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, output
    assert "PTQ4VM_INT8_FLOAT_PRECISION='fp16': expected auto, f32 or bf16" in output
    assert "Traceback" not in output
