"""The WebSocket protocol of `/v1/stream` (DESIGN 4.3) as data: every message both ways, error
and close codes.

Every text message the server sends is one of the models below (`ServerMessage`), serialised by
`dump`. The JSON schema of both directions is docs/stream-protocol.schema.json, with a copy in
the Python client's package that it checks every message against, both written by

    python -m server.streaming.protocol docs/stream-protocol.schema.json \
        clients/python/ptq4vm_client/protocol.schema.json

Tests check the files against these models, the Python client's reads and the browser page's
(tests/server/test_protocol_schema.py). docs/server.md is the user-facing description.
"""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.streaming.codec import InputFormat, OutputFormat, network_size_error


class Close(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000  # after `stop`
    GOING_AWAY = 1001  # idle timeout, server shutdown, session resumed on another connection
    UNSUPPORTED = 1003  # a text message that is no JSON object of a known type
    POLICY = 1008  # protocol violation: frame before start, bad start, unknown model ...
    TOO_BIG = 1009  # a message over PTQ4VM_MAX_MESSAGE_BYTES
    INTERNAL = 1011  # the model cannot be loaded (e.g. a corrupt artifact)
    AT_CAPACITY = 1013  # PTQ4VM_MAX_SESSIONS sessions are open: try again later


class StartMessage(BaseModel):
    """`{"type":"start",...}`; unknown extra fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["start"]
    width: Annotated[int, Field(gt=0)]
    height: Annotated[int, Field(gt=0)]
    input: InputFormat = "jpeg"
    output: OutputFormat = "alpha_png"
    # A ratio, null (the server's choice for the size), or "adaptive": from the server's choice
    # down while frames cost more than `target_fps` allows (server.streaming.adaptive).
    downsample_ratio: Annotated[float, Field(gt=0, le=1)] | Literal["adaptive"] | None = None
    model: str | None = None
    target_fps: Annotated[float, Field(gt=0, le=120)] | None = None

    @property
    def fixed_ratio(self) -> float | None:
        """The ratio asked for, None for the server's choice (also where adaptive starts)."""
        return None if self.downsample_ratio == "adaptive" else self.downsample_ratio


class ResetMessage(BaseModel):
    """`{"type":"reset"}`: zero the recurrent state (the next frame runs `fresh`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["reset"]


class StopMessage(BaseModel):
    """`{"type":"stop"}`: end the session once the frames in flight are matted."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["stop"]


PingId = Annotated[str, Field(max_length=128)] | Annotated[int, Field(gt=-(2**53), lt=2**53)]


class PingMessage(BaseModel):
    """`{"type":"ping","id":...}`: answered by a `pong` with the same `id`."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["ping"]
    id: PingId | None = None


ClientMessage = Annotated[
    StartMessage | ResetMessage | StopMessage | PingMessage, Field(discriminator="type")
]


# What the server sends ----------------------------------------------------------------------


class _Outgoing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartedMessage(_Outgoing):
    """The answer to `start` (and to a resume): the session's ID (a bearer capability for
    `?session=ID`), the model version and engine it keeps, its frame shape and formats, and
    `next_seq`, the seq its next frame will get. `expired` says why a session a client tried
    to resume is gone (it was evicted or expired; this is a new one)."""

    type: Literal["started"] = "started"
    session: str
    model: str
    engine: str
    downsample_ratio: float
    adaptive: bool = False
    width: int
    height: int
    input: InputFormat
    output: OutputFormat
    resumed: bool
    next_seq: int
    expired: str | None = None


class MatteMessage(_Outgoing):
    """The header of one processed frame; its binary payload (a grey PNG, or W*H bytes for
    `format` raw) follows at once. `dropped`: seqs replaced since the previous matte
    (latest-frame-wins); `fresh`: the frame ran from a zero state; the `*_ms` say where the
    server's time went."""

    type: Literal["matte"] = "matte"
    seq: int
    model: str
    dropped: list[int]
    fresh: bool
    width: int
    height: int
    format: Literal["png", "raw"]
    downsample_ratio: float
    batch: int
    queue_ms: float
    decode_ms: float
    infer_ms: float
    encode_ms: float
    server_ms: float


class StoppedMessage(_Outgoing):
    """The answer to `stop`: frames received, matted and dropped over the session."""

    type: Literal["stopped"] = "stopped"
    session: str
    frames: int
    matted: int
    dropped: int


class PongMessage(_Outgoing):
    """The answer to `ping`, with its `id` when it had one."""

    type: Literal["pong"] = "pong"
    id: PingId | None = None


class ErrorMessage(_Outgoing):
    """What went wrong (`code`, docs/server.md lists them) and why; `seq` when one frame was
    refused (the session goes on)."""

    type: Literal["error"] = "error"
    code: str
    message: str
    seq: int | None = None


ServerMessage = StartedMessage | MatteMessage | StoppedMessage | PongMessage | ErrorMessage


def dump(message: ServerMessage) -> str:
    """The message as compact JSON; fields left None (optional ones) are left out."""
    return message.model_dump_json(exclude_none=True)


def schema() -> dict[str, Any]:
    """The JSON schema of both directions: `client` (what a client may send as text) and
    `server` (what the server sends), each a union over `type`."""
    server = Annotated[ServerMessage, Field(discriminator="type")]
    outgoing = TypeAdapter(server).json_schema(mode="serialization")
    for model in outgoing["$defs"].values():  # `type` has a default, and is always sent
        model["required"] = ["type", *model.get("required", [])]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "PTQ4VM /v1/stream WebSocket messages (text frames; frames and matte "
        "payloads are binary)",
        "client": TypeAdapter(ClientMessage).json_schema(),
        "server": outgoing,
    }


CONTROL_TYPES = frozenset({"start", "reset", "stop", "ping"})
# Control messages are flat objects; anything nested deeper is refused unparsed further.
MAX_JSON_DEPTH = 8
# A ping's `id` is echoed back: a short string or an integer only.
MAX_PING_ID_CHARS = 128


class ProtocolError(Exception):
    """A message breaks the protocol: tell the client `code`/`message`, then close with
    `close` (None: the session stays open)."""

    def __init__(self, code: str, message: str, close: Close | None) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


def _too_deep(value: Any, limit: int) -> bool:
    """Whether `value` nests lists/objects more than `limit` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_control(text: str, max_bytes: int | None = None) -> dict[str, Any]:
    """A text message -> its JSON object with a known `type`, or ProtocolError: 1009 over
    `max_bytes` (never parsed), 1003 not JSON, nested over MAX_JSON_DEPTH, or no known type."""
    if max_bytes is not None and len(text) > max_bytes:  # characters >= bytes / 4: cheap
        size = len(text.encode())
        if size > max_bytes:
            raise ProtocolError(
                "too_big",
                f"text message of {size} bytes is over {max_bytes} (PTQ4VM_MAX_TEXT_BYTES)",
                Close.TOO_BIG,
            )
    try:
        obj = json.loads(text)
    except RecursionError:
        obj = None
        nested = True
    except ValueError as exc:
        raise ProtocolError(
            "bad_message", f"text message is not JSON: {str(exc)[:200]}", Close.UNSUPPORTED
        ) from None
    else:
        nested = _too_deep(obj, MAX_JSON_DEPTH)
    if nested:
        raise ProtocolError(
            "bad_message",
            f"text message nests JSON deeper than {MAX_JSON_DEPTH} levels",
            Close.UNSUPPORTED,
        )
    if not isinstance(obj, dict):
        raise ProtocolError(
            "bad_message", "text message must be a JSON object with a 'type'", Close.UNSUPPORTED
        )
    kind = obj.get("type")
    if kind not in CONTROL_TYPES:
        raise ProtocolError(
            "bad_message",
            f"unknown message type {kind!r}; expected one of {sorted(CONTROL_TYPES)} "
            "(frames are binary messages)",
            Close.UNSUPPORTED,
        )
    if kind == "ping" and "id" in obj:
        ping_id = obj["id"]
        short = isinstance(ping_id, str) and len(ping_id) <= MAX_PING_ID_CHARS
        if not (short or (isinstance(ping_id, int) and abs(ping_id) < 2**53)):
            raise ProtocolError(
                "bad_message",
                f"a ping id must be a string of at most {MAX_PING_ID_CHARS} characters or an "
                "integer",
                Close.UNSUPPORTED,
            )
    return obj


def parse_start(obj: dict[str, Any], max_side: int, max_pixels: int | None = None) -> StartMessage:
    try:
        start = StartMessage.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise ProtocolError(
            "bad_start", f"invalid start message: {problems}", Close.POLICY
        ) from None
    if max(start.width, start.height) > max_side:
        raise ProtocolError(
            "bad_start",
            f"frame size {start.width}x{start.height} is over the limit of {max_side} px a side "
            "(PTQ4VM_MAX_FRAME_SIDE)",
            Close.POLICY,
        )
    if max_pixels is not None and start.width * start.height > max_pixels:
        raise ProtocolError(
            "bad_start",
            f"frame size {start.width}x{start.height} is over the limit of {max_pixels} pixels "
            "(PTQ4VM_MAX_PIXELS)",
            Close.POLICY,
        )
    ratio = resolve_downsample_ratio(start.fixed_ratio, start.width, start.height)
    problem = network_size_error(start.width, start.height, ratio)
    if problem is not None:
        raise ProtocolError("bad_start", problem, Close.POLICY)
    return start


def error(code: str, message: str, seq: int | None = None) -> ErrorMessage:
    return ErrorMessage(code=code, message=message, seq=seq)


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":
    for target in sys.argv[1:]:
        Path(target).write_text(schema_text())
