"""The WebSocket protocol of `/v1/stream` (DESIGN 4.3) as data: messages, error and close codes.

docs/server.md is the user-facing description; keep the two in step.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.codec import InputFormat, OutputFormat, network_size_error


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
    downsample_ratio: Annotated[float, Field(gt=0, le=1)] | None = None
    model: str | None = None


CONTROL_TYPES = frozenset({"start", "reset", "stop", "ping"})


class ProtocolError(Exception):
    """A message breaks the protocol: tell the client `code`/`message`, then close with
    `close` (None: the session stays open)."""

    def __init__(self, code: str, message: str, close: Close | None) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


def parse_control(text: str) -> dict[str, Any]:
    """A text message -> its JSON object with a known `type`, or ProtocolError (1003)."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(
            "bad_message", f"text message is not JSON: {exc}", Close.UNSUPPORTED
        ) from None
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
    return obj


def parse_start(obj: dict[str, Any], max_side: int) -> StartMessage:
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
    ratio = resolve_downsample_ratio(start.downsample_ratio, start.width, start.height)
    problem = network_size_error(start.width, start.height, ratio)
    if problem is not None:
        raise ProtocolError("bad_start", problem, Close.POLICY)
    return start


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}
