"""The fault tests run on the integration fixtures of tests/server: real uvicorn servers on
loopback with their own PTQ4VM_HOME, the real weights and sample clip, a tiny real artifact."""

from tests.server.conftest import (  # noqa: F401 - fixtures
    assets,
    clip_rgb,
    quantized_artifact,
    server,
    start_server,
)
