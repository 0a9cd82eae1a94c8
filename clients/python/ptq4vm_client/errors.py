"""Exceptions of the client; every one derives from :class:`Ptq4vmError`."""

from __future__ import annotations

from typing import Any


class Ptq4vmError(Exception):
    """Base class of every error this package raises."""


class CodecUnavailableError(Ptq4vmError):
    """JPEG/PNG encoding or PNG decoding was asked for, but neither OpenCV nor Pillow is
    installed (`pip install 'ptq4vm-client[images]'`, or use `rgb24` / `alpha_raw`)."""


class StreamError(Ptq4vmError):
    """Base class of streaming errors."""


class FrameError(StreamError):
    """The server rejected one frame (`bad_frame`, `wrong_size`, `internal`); the stream goes
    on. Raised by `recv()` in the frame's place."""

    def __init__(self, code: str, message: str, seq: int) -> None:
        super().__init__(f"frame {seq}: {code}: {message}")
        self.code = code
        self.message = message
        self.seq = seq


class StreamClosedError(StreamError):
    """The server closed the stream: `code` is its error code (`bad_start`, `at_capacity`,
    `unknown_model`, `session_resumed`, ...; None when it sent none), `close_code` the
    WebSocket close code (1008, 1013, ...; None when the connection just dropped)."""

    def __init__(self, code: str | None, message: str, close_code: int | None) -> None:
        super().__init__(f"stream closed ({close_code}, {code or 'no error code'}): {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


class ConnectError(StreamError):
    """The stream could not be opened: the server is unreachable or the URL is not a
    WebSocket endpoint (the cause is chained)."""


class ConnectionLostError(StreamError):
    """The connection dropped and resuming the session failed (or auto-resume is off)."""


class MattesLostError(StreamError):
    """The connection dropped before the mattes of frames `seqs` came back. Raised by `recv()`
    in their place; the stream goes on. Of those, `unprocessed` never reached the server (the
    recurrent state did not see them: send them again to keep it exact); the others advanced
    the state but their mattes are gone."""

    def __init__(self, seqs: tuple[int, ...], unprocessed: tuple[int, ...]) -> None:
        super().__init__(
            f"mattes of frames {list(seqs)} lost in a reconnect "
            f"({list(unprocessed) or 'none'} never reached the server)"
        )
        self.seqs = seqs
        self.unprocessed = unprocessed


class StreamEndedError(StreamError):
    """`recv()` after the stream was stopped and every matte was read."""


class ServiceError(Ptq4vmError):
    """An HTTP request failed: `status` and the server's `detail`."""

    def __init__(self, method: str, url: str, status: int, detail: Any) -> None:
        super().__init__(f"{method} {url} -> {status}: {detail}")
        self.method = method
        self.url = url
        self.status = status
        self.detail = detail


class JobFailedError(Ptq4vmError):
    """A video job or a calibration ended in the `failed` state; `error` is the server's."""

    def __init__(self, kind: str, id: str, error: str | None) -> None:
        super().__init__(f"{kind} {id} failed: {error or 'no reason given'}")
        self.id = id
        self.error = error


class WaitTimeoutError(Ptq4vmError, TimeoutError):
    """Waiting for a job or calibration took longer than the timeout given."""
