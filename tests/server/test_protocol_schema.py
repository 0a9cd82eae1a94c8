"""The WebSocket protocol's schema (issue 27): every message the server sends is a model of
`server.streaming.protocol`, the schema of both directions is written to docs/ (and shipped with
the Python client), and the messages a real session sends are what that schema says. A field
renamed in a model fails here until the schema is rewritten, and then fails the clients' checks
(tests/clients/test_protocol_fields.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from numpy.typing import NDArray

from server.streaming.protocol import schema_text
from tests.server.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = (
    ROOT / "docs" / "stream-protocol.schema.json",
    ROOT / "clients" / "python" / "ptq4vm_client" / "protocol.schema.json",
)
REGENERATE = (
    "python -m server.streaming.protocol docs/stream-protocol.schema.json "
    "clients/python/ptq4vm_client/protocol.schema.json"
)


def test_the_written_schemas_are_the_models() -> None:
    for path in SCHEMA_FILES:
        assert path.read_text() == schema_text(), f"{path} is stale: run `{REGENERATE}`"


def test_a_session_sends_what_the_schema_says(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    schema = json.loads(schema_text())
    outgoing = jsonschema.Draft202012Validator(schema["server"])
    incoming = jsonschema.Draft202012Validator(schema["client"])
    frame = clip_rgb[0].tobytes()
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    def send(stream: Any, obj: dict[str, Any]) -> None:
        sent.append(obj)
        stream.send_json(obj)

    with server.stream(input="rgb24", output="alpha_png") as stream:
        received.append(stream.started)
        sent.append(stream.fields)
        received.append(stream.matte(frame)[0])
        stream.conn.send(b"\x00" * 7)  # a raw frame of the wrong size: an error with its seq
        received.append(stream.recv_json())
        send(stream, {"type": "ping", "id": "p1"})
        received.append(stream.recv_json())
        send(stream, {"type": "reset"})
        received.append(stream.matte(frame)[0])
        send(stream, {"type": "stop"})
        received.append(stream.recv_json())
    kinds = [m["type"] for m in received]
    assert kinds == ["started", "matte", "error", "pong", "matte", "stopped"]
    assert received[2]["seq"] == 1
    assert received[3]["id"] == "p1"
    assert received[4]["fresh"]
    for message in received:
        outgoing.validate(message)
    for message in sent:
        incoming.validate(message)
    # A field the schema does not know fails it: the check is not vacuous.
    assert not outgoing.is_valid({**received[1], "sequence": 0})
    assert not outgoing.is_valid({k: v for k, v in received[0].items() if k != "next_seq"})
