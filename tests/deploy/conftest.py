"""The deployment files (deploy/) against real servers: the fixtures of tests/server (uvicorn
on a loopback port, a temporary PTQ4VM_HOME with the real weights and sample clip)."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import (  # noqa: F401  (fixtures, registered by import)
    assets,
    clip_rgb,
    quantized_artifact,
    server,
    start_server,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
