"""`AsyncStream`: one matting session over `GET /v1/stream` (DESIGN 4.3), for asyncio.

A background task reads the socket, so mattes are collected while the caller sends; `recv()`
hands them out in seq order. At most `window` frames are in flight (sent, their matte not yet
received); `send()` waits for a slot. When the connection drops, the task reconnects to
`?session=ID` with the same start message and the session resumes with its recurrent state
(kept by the server for PTQ4VM_SESSION_TTL_S). A frame whose send failed is sent again on the
new connection; frames that reached the old one but whose mattes did not come back advanced
the state and are reported by `recv()` raising MattesLostError in their place.

Past 400 lines on purpose: the session's reader task, its send window and its reconnection
with state replay are one state machine over one socket; split, each part would need the
others' private state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ptq4vm_client.codec import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    InputFormat,
    OutputFormat,
    check_frame,
    decode_matte,
    encode_frame,
)
from ptq4vm_client.errors import (
    ConnectError,
    ConnectionLostError,
    FrameError,
    MattesLostError,
    StreamClosedError,
    StreamEndedError,
    StreamError,
)
from ptq4vm_client.messages import Matte, Started, Stopped, StreamStats
from ptq4vm_client.protocol import check

logger = logging.getLogger(__name__)

# Close codes after which the same session can be resumed: no close frame (a network drop),
# going away (the server's idle timeout; not `session_resumed`), service restart.
_RESUMABLE = {None, 1001, 1006, 1012}
_END = object()  # queued after the last matte of a stopped or failed stream


class AsyncStream:
    """A streaming session. Use as `async with AsyncStream(url, width=W, height=H) as s:`.

    Frames are `[height,width,3]` uint8 RGB arrays (encoded as `input`) or bytes already in the
    `input` format. `window=1` is lockstep: no frame is ever dropped by the server.
    `session=ID` resumes an existing session instead of starting one.
    `downsample_ratio="adaptive"` lets the server lower the ratio while a frame costs it more
    than `target_fps` (default 15) allows; each matte's `info["downsample_ratio"]` says which.
    """

    def __init__(
        self,
        url: str,
        *,
        width: int,
        height: int,
        input: InputFormat = "jpeg",
        output: OutputFormat = "alpha_png",
        downsample_ratio: float | Literal["adaptive"] | None = None,
        model: str | None = None,
        target_fps: float | None = None,
        window: int = 1,
        auto_resume: bool = True,
        resume_attempts: int = 5,
        resume_delay_s: float = 0.25,
        jpeg_quality: int = 90,
        open_timeout_s: float = 30.0,
        session: str | None = None,
    ) -> None:
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"url must be ws://HOST:PORT/v1/stream or wss://..., got {url!r}")
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if input not in INPUT_FORMATS:
            raise ValueError(f"input must be one of {INPUT_FORMATS}, got {input!r}")
        if output not in OUTPUT_FORMATS:
            raise ValueError(f"output must be one of {OUTPUT_FORMATS}, got {output!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1 frame in flight, got {window}")
        fixed = None if downsample_ratio == "adaptive" else downsample_ratio
        if fixed is not None and not 0 < fixed <= 1:
            raise ValueError(
                f"downsample_ratio must be in (0, 1] or 'adaptive', got {downsample_ratio!r}"
            )
        self.url = url
        self.width, self.height = width, height
        self.input: InputFormat = input
        self.output: OutputFormat = output
        self.window = window
        self.auto_resume = auto_resume
        self.resume_attempts = resume_attempts
        self.resume_delay_s = resume_delay_s
        self.jpeg_quality = jpeg_quality
        self.open_timeout_s = open_timeout_s
        self.stats = StreamStats()
        self._start_message: dict[str, Any] = {
            "type": "start",
            "width": width,
            "height": height,
            "input": input,
            "output": output,
            "downsample_ratio": downsample_ratio,
            "model": model,
            **({"target_fps": target_fps} if target_fps is not None else {}),
        }
        self._resume_id = session
        self._ws: ClientConnection | None = None
        self._started: Started | None = None
        self._reader: asyncio.Task[None] | None = None
        self._mattes: asyncio.Queue[Matte | StreamError | object] = asyncio.Queue()
        self._cond = asyncio.Condition()
        self._connected = False
        self._next_seq = 0  # the client seq of the next frame
        self._resolved = 0  # every client seq below this has its matte, drop, error or loss
        self._offset = 0  # client seq = server seq + offset (frames lost in reconnects)
        self._sent_at: dict[int, float] = {}
        self._send_lock = asyncio.Lock()  # one frame written at a time, in seq order
        self._sending: int | None = None  # seq of the frame being written, if any
        self._sending_arrived = False  # a reconnect found that frame at the server
        self._generation = 0  # connections made (a send waits for the next one)
        self._fatal: StreamError | None = None
        self._stopping = False
        self._closing = False
        self._stopped: Stopped | None = None
        self._done = asyncio.Event()

    # Life cycle -------------------------------------------------------------------------------

    async def open(self) -> Started:
        """Connects and starts (or resumes, with `session=`) the session."""
        if self._started is not None:
            raise StreamError("the stream is already open")
        try:
            self._ws, self._started = await self._connect(self._resume_id)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectError(f"cannot open a stream at {self.url}: {exc}") from exc
        self._offset = -self._started.next_seq
        self._connected = True
        self._reader = asyncio.create_task(self._read_loop(), name="ptq4vm-stream-reader")
        return self._started

    async def __aenter__(self) -> AsyncStream:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None and self._fatal is None and self._stopped is None:
            await self.stop()
        await self.close()

    async def stop(self, timeout: float | None = 60.0) -> Stopped:
        """Ends the session cleanly: the server mattes the frames it holds (they stay readable
        with `recv()`), answers `stopped` and closes."""
        self._raise_fatal()
        if self._stopped is None:
            self._stopping = True
            await self._send_json({"type": "stop"})
            async with asyncio.timeout(timeout):
                await self._done.wait()
        self._raise_fatal()
        assert self._stopped is not None
        return self._stopped

    async def close(self) -> None:
        """Closes the socket without stopping: the server keeps the session for resumption
        (PTQ4VM_SESSION_TTL_S) unless it was stopped."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._done.set()

    # Streaming --------------------------------------------------------------------------------

    @property
    def started(self) -> Started:
        """The latest `started` answer (it changes when a resume had to start a new session)."""
        if self._started is None:
            raise StreamError("the stream is not open; use `async with` or await open()")
        return self._started

    @property
    def session(self) -> str:
        return self.started.session

    @property
    def in_flight(self) -> int:
        """Frames sent whose matte, drop, error or loss has not been received yet."""
        return self._next_seq - self._resolved

    def encode(self, frame: np.ndarray[Any, Any] | bytes) -> bytes:
        """A frame as the bytes the server expects (bytes pass through unchanged)."""
        if isinstance(frame, bytes | bytearray | memoryview):
            return bytes(frame)
        checked = check_frame(frame, self.width, self.height)
        return encode_frame(checked, self.input, jpeg_quality=self.jpeg_quality)

    async def send(self, frame: np.ndarray[Any, Any] | bytes) -> int:
        """Sends one frame once fewer than `window` are in flight; returns its seq."""
        data = self.encode(frame)
        async with self._send_lock:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: (
                        self._fatal is not None
                        or self._stopped is not None
                        or (self._connected and self.in_flight < self.window)
                    )
                )
                self._raise_fatal()
                if self._stopping or self._stopped is not None:
                    raise StreamEndedError("the stream is stopping; no more frames can be sent")
                seq = self._sending = self._next_seq
                self._next_seq += 1
                self.stats.sent += 1
            try:
                while True:
                    async with self._cond:
                        ws, generation = self._ws, self._generation
                        self._sent_at[seq] = time.monotonic()
                    assert ws is not None
                    try:
                        await ws.send(data)
                        return seq
                    except ConnectionClosed:
                        if not self.auto_resume:
                            raise ConnectionLostError(
                                "the connection dropped (auto_resume is off)"
                            ) from None
                    # The reader resumes the session; then this frame goes again, unless the
                    # server had received it after all.
                    async with self._cond:
                        await self._cond.wait_for(partial(self._reconnected_since, generation))
                        self._raise_fatal()
                        if self._sending_arrived:
                            return seq
            finally:
                self._sending, self._sending_arrived = None, False

    def _reconnected_since(self, generation: int) -> bool:
        return self._fatal is not None or (self._connected and self._generation != generation)

    async def recv(self, timeout: float | None = None) -> Matte:
        """The next matte in seq order. Raises FrameError for a frame the server rejected,
        StreamEndedError after the last matte of a stopped stream, StreamClosedError or
        ConnectionLostError when the stream failed, TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            item = await self._mattes.get()
        if item is _END:
            self._mattes.put_nowait(_END)
            self._raise_fatal()
            raise StreamEndedError("the stream was stopped and every matte has been read")
        if isinstance(item, FrameError | MattesLostError):
            raise item
        assert isinstance(item, Matte)
        return item

    async def matte(self, frame: np.ndarray[Any, Any] | bytes, timeout: float | None = 60) -> Matte:
        """Lockstep: sends one frame and returns its matte."""
        await self.send(frame)
        return await self.recv(timeout)

    async def reset(self) -> None:
        """Zeroes the recurrent state for the frames sent after this (the next matte has
        `fresh=True`); a session that named no model moves to the active version."""
        await self._send_json({"type": "reset"})

    def __aiter__(self) -> AsyncIterator[Matte]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Matte]:
        """Mattes until the stream ends; frame errors and lost mattes are logged and skipped
        (`recv()` raises them)."""
        while True:
            try:
                yield await self.recv()
            except (FrameError, MattesLostError) as exc:
                logger.warning("%s", exc)
            except StreamEndedError:
                return

    # Internals --------------------------------------------------------------------------------

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _send_json(self, message: dict[str, Any]) -> None:
        self._raise_fatal()
        async with self._cond:
            await self._cond.wait_for(lambda: self._fatal is not None or self._connected)
            self._raise_fatal()
            ws = self._ws
        assert ws is not None
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            raise ConnectionLostError(f"the connection dropped sending {message['type']}") from None

    async def _connect(self, session: str | None) -> tuple[ClientConnection, Started]:
        url = self.url if session is None else f"{self.url}?{urlencode({'session': session})}"
        ws = await connect(url, compression=None, max_size=None, open_timeout=self.open_timeout_s)
        try:
            await ws.send(json.dumps(self._start_message))
            async with asyncio.timeout(self.open_timeout_s):
                reply = await ws.recv()
            message = check(json.loads(reply)) if isinstance(reply, str) else {}
            if message.get("type") != "started":
                await ws.close()
                raise StreamClosedError(
                    message.get("code"),
                    message.get("message", f"unexpected answer to start: {reply!r:.200}"),
                    ws.close_code,
                )
        except ConnectionClosed as exc:
            raise StreamClosedError(None, exc.rcvd.reason if exc.rcvd else "", _code(exc)) from None
        except BaseException:
            await ws.close()
            raise
        return ws, Started.from_message(message)

    async def _read_loop(self) -> None:
        last_error: dict[str, Any] | None = None
        try:
            while True:
                ws = self._ws
                assert ws is not None
                try:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        continue  # a payload whose matte header was lost; never expected
                    obj = check(json.loads(message))
                    if obj["type"] == "matte":
                        await self._on_matte(obj, await ws.recv())
                        continue
                except ConnectionClosed as exc:
                    if self._closing or self._stopped is not None:
                        return
                    if self._stopping:
                        raise ConnectionLostError("the connection dropped while stopping") from None
                    code = _code(exc)
                    err = last_error or {}
                    resumable = code in _RESUMABLE and err.get("code") != "session_resumed"
                    if not (resumable and self.auto_resume):
                        await self._fail(
                            StreamClosedError(
                                err.get("code"),
                                err.get("message") or (exc.rcvd.reason if exc.rcvd else ""),
                                code,
                            )
                            if code not in (None, 1006)
                            else ConnectionLostError("the connection dropped (auto_resume off)")
                        )
                        return
                    await self._reconnect()
                    last_error = None
                    continue
                kind = obj["type"]
                if kind == "error" and "seq" in obj:
                    await self._on_frame_error(obj)
                elif kind == "error":
                    last_error = obj
                    logger.warning("server error: %s: %s", obj["code"], obj["message"])
                elif kind == "stopped":
                    self._stopped = Stopped.from_message(obj)
                    await self._finish()
                    return
        except StreamError as exc:
            await self._fail(exc)
        except Exception as exc:
            await self._fail(StreamError(f"the stream reader failed: {exc!r}"))
            raise

    async def _on_matte(self, obj: dict[str, Any], payload: str | bytes) -> None:
        now = time.monotonic()
        if not isinstance(payload, bytes):
            raise StreamError("a matte message was not followed by its binary payload")
        seq = int(obj["seq"]) + self._offset
        dropped = tuple(int(s) + self._offset for s in obj["dropped"])
        for s in dropped:
            self._sent_at.pop(s, None)
        sent = self._sent_at.pop(seq, now)
        alpha = decode_matte(payload, self.output, int(obj["width"]), int(obj["height"]))
        self.stats.mattes += 1
        self.stats.dropped += len(dropped)
        self._mattes.put_nowait(
            Matte(
                seq=seq,
                alpha=alpha,
                model=str(obj["model"]),
                dropped=dropped,
                fresh=bool(obj["fresh"]),
                latency_s=now - sent,
                data=payload,
                info=obj,
            )
        )
        await self._resolve(seq + 1)

    async def _on_frame_error(self, obj: dict[str, Any]) -> None:
        seq = int(obj["seq"]) + self._offset
        self._sent_at.pop(seq, None)
        self.stats.frame_errors += 1
        self._mattes.put_nowait(FrameError(str(obj["code"]), str(obj["message"]), seq))
        await self._resolve(seq + 1)

    async def _resolve(self, upto: int) -> None:
        async with self._cond:
            self._resolved = max(self._resolved, upto)
            self._cond.notify_all()

    async def _reconnect(self) -> None:
        assert self._started is not None
        async with self._cond:
            self._connected = False
        last: BaseException | None = None
        for attempt in range(self.resume_attempts):
            await asyncio.sleep(self.resume_delay_s * attempt)
            try:
                ws, started = await self._connect(self._started.session)
            except StreamClosedError as exc:
                if exc.close_code not in (1013, None, 1006):
                    raise  # a refusal that a retry will not change
                last = exc
                continue
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                last = exc
                continue
            async with self._cond:
                # Client seqs below `arrived` reached the server (their mattes are lost); a
                # frame still being written did not, unless `arrived` says so: it is sent again
                # and becomes the new session seq `started.next_seq`.
                arrived = started.next_seq + self._offset if started.resumed else self._resolved
                resend = self._sending is not None and arrived <= self._sending
                self._sending_arrived = self._sending is not None and not resend
                first_new = (
                    self._sending if resend and self._sending is not None else self._next_seq
                )
                lost = tuple(range(self._resolved, first_new))
                for s in lost:
                    self._sent_at.pop(s, None)
                if lost:
                    unprocessed = tuple(q for q in lost if q >= arrived)
                    self._mattes.put_nowait(MattesLostError(lost, unprocessed))
                self.stats.lost += len(lost)
                self.stats.resumes += 1
                self._resolved = first_new
                self._offset = first_new - started.next_seq
                self._generation += 1
                if not started.resumed:
                    logger.warning(
                        "session %s had expired; continuing in new session %s (state reset)",
                        self._started.session,
                        started.session,
                    )
                self._ws, self._started, self._connected = ws, started, True
                self._cond.notify_all()
            logger.info("session %s resumed (%d mattes lost)", started.session, len(lost))
            return
        raise ConnectionLostError(
            f"the connection dropped and {self.resume_attempts} resume attempts failed: {last!r}"
        )

    async def _fail(self, error: StreamError) -> None:
        if self._fatal is None:
            self._fatal = error
        await self._finish()

    async def _finish(self) -> None:
        self._mattes.put_nowait(_END)
        self._done.set()
        async with self._cond:
            self._cond.notify_all()


def _code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None
