"""The clients run against the real servers of tests/server (uvicorn on a loopback port, a
temporary PTQ4VM_HOME with the real weights and sample clip), reusing its fixtures."""

from __future__ import annotations

import pytest

from tests.server.conftest import (  # noqa: F401  (fixtures, registered by import)
    assets,
    clip_rgb,
    fp32_reference,
    quantized_artifact,
    server,
    start_server,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Debian's chromium or firefox-esr headless (`make setup`)"
    )
