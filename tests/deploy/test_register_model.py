"""`ptq4vm-register` (deploy/register_model.py), the calibration Job's last step: a calibrated
artifact into the shared registry, active for the servers that start next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.conftest import DEPLOY
from tests.server.conftest import Assets, ServerFactory, make_home


def register(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PTQ4VM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "register_model.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_register_and_activate_for_the_next_server(
    quantized_artifact: Path, assets: Assets, start_server: ServerFactory, tmp_path: Path
) -> None:
    home = make_home(tmp_path / "home", assets)
    done = register(home, str(quantized_artifact), "--activate")
    assert done.returncode == 0, done.stderr
    version = done.stdout.strip()
    assert version == "tiny-w8a8"
    assert (home / "models" / version / "manifest.json").is_file()
    assert quantized_artifact.is_dir(), "the source artifact must be copied, not moved"
    assert json.loads((home / "models" / "active.json").read_text())["version"] == version

    again = register(home, str(quantized_artifact))
    assert again.returncode != 0
    assert "already exists" in again.stderr

    server = start_server(home=home)
    with server.client() as http:
        ready = http.get("/readyz").json()
    assert ready["model"] == version
    with server.stream(width=176, height=144) as stream:
        assert stream.started["model"] == version
