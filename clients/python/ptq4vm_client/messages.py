"""What a stream returns: the session it started, mattes, and the summary at its end. Built
from server messages `ptq4vm_client.protocol.check` has passed (their fields are there)."""

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
            model=str(message["model"]),
            downsample_ratio=float(message["downsample_ratio"]),
            resumed=bool(message["resumed"]),
            next_seq=int(message["next_seq"]),
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
            session=str(message["session"]),
            frames=int(message["frames"]),
            matted=int(message["matted"]),
            dropped=int(message["dropped"]),
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
