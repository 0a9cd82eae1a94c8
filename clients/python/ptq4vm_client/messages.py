"""What a stream returns: the session it started, mattes, and the summary at its end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ptq4vm_client.codec import Alpha


@dataclass(frozen=True)
class Started:
    """The server's `started` answer: the session ID (for resumption), the model version the
    session keeps, the downsample ratio in use, and `next_seq` (its frame counter)."""

    session: str
    model: str
    downsample_ratio: float
    resumed: bool
    next_seq: int
    info: dict[str, Any] = field(repr=False)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Started:
        return cls(
            session=str(message["session"]),
            model=str(message.get("model")),
            downsample_ratio=float(message.get("downsample_ratio") or 0.0),
            resumed=bool(message.get("resumed", False)),
            next_seq=int(message.get("next_seq", 0)),
            info=message,
        )


@dataclass(frozen=True)
class Matte:
    """One frame's matte.

    `seq` numbers frames in the order this client sent them, from 0 (the server's numbering
    too, unless a reconnect lost frames). `alpha` is `[H,W]` uint8. `dropped` are the seqs
    the server skipped since the previous matte (real time: a newer frame replaced them).
    `fresh` says the frame ran from a zero recurrent state. `latency_s` is send to receipt,
    measured here.
    """

    seq: int
    alpha: Alpha = field(repr=False)
    model: str
    dropped: tuple[int, ...]
    fresh: bool
    latency_s: float
    data: bytes = field(repr=False)
    info: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Stopped:
    """The server's summary after `stop`: frames received, matted and dropped."""

    session: str
    frames: int
    matted: int
    dropped: int
    info: dict[str, Any] = field(repr=False)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Stopped:
        return cls(
            session=str(message.get("session")),
            frames=int(message.get("frames", 0)),
            matted=int(message.get("matted", 0)),
            dropped=int(message.get("dropped", 0)),
            info=message,
        )


@dataclass
class StreamStats:
    """Counters kept by a stream on the client side."""

    sent: int = 0
    mattes: int = 0
    dropped: int = 0
    lost: int = 0
    frame_errors: int = 0
    resumes: int = 0
