"""The server's messages as its protocol schema states them (`protocol.schema.json`, the
server's docs/stream-protocol.schema.json shipped with this package): every text message this
client receives is checked against it before a field is read, so a server that renamed or
dropped a field fails here with a clear error, never deep in a `KeyError`."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from ptq4vm_client.errors import StreamError

# The fields of each server message this client reads; tests check them against the schema.
READS: dict[str, tuple[str, ...]] = {
    "started": ("session", "model", "downsample_ratio", "resumed", "next_seq"),
    "matte": ("seq", "model", "dropped", "fresh", "width", "height"),
    "stopped": ("session", "frames", "matted", "dropped"),
    "error": ("code", "message", "seq"),
    "pong": ("id",),
}


@cache
def server_messages() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """For each server message `type`: (its fields, the required ones), from the schema."""
    schema = json.loads(files("ptq4vm_client").joinpath("protocol.schema.json").read_text())
    messages = {}
    for model in schema["server"]["$defs"].values():
        kind = model["properties"]["type"]["const"]
        messages[kind] = (frozenset(model["properties"]), frozenset(model["required"]))
    return messages


def check(message: Any) -> dict[str, Any]:
    """`message` (parsed JSON) when it is a server message with every required field, else
    StreamError naming what is wrong."""
    if not isinstance(message, dict):
        raise StreamError(f"the server sent {type(message).__name__}, not a JSON object")
    kind = message.get("type")
    known = server_messages()
    if kind not in known:
        raise StreamError(f"the server sent an unknown message type {kind!r}")
    missing = known[kind][1] - message.keys()
    if missing:
        raise StreamError(f"the server's {kind} message lacks {sorted(missing)}")
    return message
