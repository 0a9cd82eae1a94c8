"""One WHIP publisher: its peer connection, its session, the track sent back (DESIGN 4.6).

    POST /v1/whip --> CONNECTING --ICE+DTLS--> CONNECTED --first frame--> STREAMING
        |                 |  (connect_timeout_s)                  |  frames, mattes
        +-------- DELETE / failure / timeout / track ended / limit ---> ENDED

Capacity is taken when the offer is accepted (as a WebSocket connection is admitted) and the
model leased then; the session (`server.streaming.session`, with its recurrent state and
latest-frame-wins) starts at the first frame, whose size it keeps: later frames of another
size are scaled to it, so the returned track keeps one size.

Every received frame gets one frame back, with the same timestamp: its own matte, or, for a
frame dropped because a newer one came (latest-frame-wins), the last matte repeated. The
returned track so keeps the input's frame rate. Frames arriving faster than
`whip_max_fps` are discarded before matting (not echoed); a publisher sending at
`FAST_FACTOR` times that is ended. The data channel `ptq4vm` (the publisher opens it in its
offer) carries one JSON object per matte: `{"seq", "latency_ms", "dropped", "model", "t"}`
(`t`: the frame's time, in seconds, from the first frame received; a client matches returned
frames to its own with it), and `{"type": "error", "code", "message"}` before the server ends a
session. Dropped frames before the first matte are not sent back: the first frame back is the
first matte.

Past 400 lines because the peer's phases, the returned track's pacing and the session's
delivery share one state machine: split apart, each would read the others to be understood.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
from enum import Enum
from fractions import Fraction
from typing import Any, Protocol

import av
import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

from ptq4vm_core.engine.base import EngineState, Float32Array
from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.inference.compiles import ShapeCompiler
from server.inference.scheduler import Scheduler
from server.metrics import Metrics
from server.models.registry import ModelLease
from server.settings import Settings
from server.streaming.capacity import SessionManager
from server.streaming.codec import decode_frame, network_size_error
from server.streaming.protocol import ErrorMessage, MatteMessage, ServerMessage, StartMessage
from server.streaming.session import Session
from server.webrtc.render import Background, Output, render

logger = logging.getLogger(__name__)

CHANNEL = "ptq4vm"
# Frames waiting for the returned track's encoder; past it the oldest is dropped.
MAX_OUT_QUEUE = 8
# A publisher sending at this many times `whip_max_fps` (over one second) is ended.
FAST_FACTOR = 4
# Timestamps of offered frames kept for the frames sent back (latest-frame-wins keeps two).
MAX_PENDING_STAMPS = 64
WATCH_INTERVAL_S = 0.5
CLOSE_GRACE_S = 0.2


class Phase(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    STREAMING = "streaming"
    ENDED = "ended"


class WhipServices(Protocol):
    """What a WHIP peer uses of the app's services (`server.services.Services` has them)."""

    settings: Settings
    metrics: Metrics
    scheduler: Scheduler[EngineState]
    sessions: SessionManager
    compiler: ShapeCompiler


class PeerError(Exception):
    """An offer that cannot be answered; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MatteTrack(MediaStreamTrack):
    """The video track sent back: frames as the session's mattes produce them."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue()
        self.on_taken: Any = None  # called when the encoder takes a frame (backpressure)

    def put(self, frame: av.VideoFrame) -> None:
        while self._queue.qsize() >= MAX_OUT_QUEUE:
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    def backlog(self) -> int:
        return self._queue.qsize()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        if self.on_taken is not None:
            self.on_taken()
        return frame

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)


class WhipSession(Session):
    """A session whose frames are raw RGB of its size and whose result is the frame sent
    back (`render`), drawn in the inference worker. At most one frame of a session is in the
    scheduler at a time, so the frame decoded last is the one being finished."""

    def __init__(self, *args: Any, output: Output, background: Background, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.output = output
        self.background = background
        self._rgb: NDArray[np.uint8] | None = None

    def _decode(self, data: bytes) -> NDArray[np.uint8]:
        self._rgb = decode_frame(data, "rgb24", self.start.width, self.start.height)
        return self._rgb

    def _finish(self, fgr: Float32Array | None, alpha: NDArray[np.uint8]) -> bytes:
        assert self._rgb is not None
        return render(self._rgb, alpha, self.output, self.background).tobytes()


class WhipPeer:
    """One publisher; implements the session's `Outbox`."""

    def __init__(
        self,
        services: WhipServices,
        lease: ModelLease,
        *,
        client: str,
        ratio: float | None,
        output: Output,
        background: Background,
        configuration: RTCConfiguration,
        on_end: Any,
    ) -> None:
        self.id = secrets.token_urlsafe(16)
        self.services = services
        self.settings = services.settings
        self.client = client
        self.phase = Phase.CONNECTING
        self.reason: str | None = None
        self.session: WhipSession | None = None
        self.frames = 0  # received
        self.discarded = 0  # over whip_max_fps
        self._lease: ModelLease | None = lease
        self._ratio = ratio
        self._output: Output = output
        self._background = background
        self._on_end = on_end
        self._pc = RTCPeerConnection(configuration)
        self._track = MatteTrack()
        self._track.on_taken = self._on_taken
        self._channel: RTCDataChannel | None = None
        self._stamps: dict[int, tuple[int | None, Fraction | None]] = {}
        self._first_pts: int | None = None
        self._emitted: int | None = None  # the timestamp of the last frame sent back
        self._last: NDArray[np.uint8] | None = None
        self._arrivals: collections.deque[float] = collections.deque()
        self._last_frame_at = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting = False
        self.closing: asyncio.Task[None] | None = None  # the peer connection's close, once ended

    # Signalling -------------------------------------------------------------------------------

    async def answer(self, offer: str) -> str:
        """The SDP answer to `offer`; PeerError for one that cannot be answered."""
        pc = self._pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc's parser fails with asserts, Value-, Key-, IndexError
            reason = str(exc) or type(exc).__name__
            message = f"the offer is not an SDP offer aiortc can take: {reason}"
            raise PeerError(400, message) from None
        videos = [t for t in pc.getTransceivers() if t.kind == "video"]
        if len(videos) != 1:
            raise PeerError(422, f"the offer has {len(videos)} video tracks; send exactly one")
        offered = getattr(videos[0], "_offerDirection", None)  # aiortc keeps it private
        if offered != "sendrecv":
            raise PeerError(
                422,
                f"the offer's video is {offered}; offer it sendrecv: the matted track comes "
                "back on the same transceiver",
            )
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":  # never read: the answer asks for none
                transceiver.direction = "inactive"
        pc.addTrack(self._track)  # on the offer's video transceiver, now sendrecv
        await pc.setLocalDescription(await pc.createAnswer())
        self._spawn(self._watch())
        return pc.localDescription.sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._consume(track))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == CHANNEL:
            self._channel = channel

    async def _on_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected" and self.phase is Phase.CONNECTING:
            self.phase = Phase.CONNECTED
            logger.info("whip %s connected from %s", self.id, self.client)
        elif state in ("failed", "closed"):
            self.end("disconnected", f"the peer connection {state}")

    # Frames -----------------------------------------------------------------------------------

    async def _consume(self, track: MediaStreamTrack) -> None:
        while self.phase is not Phase.ENDED:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.end("track_ended", "the publisher's video track ended")
                return
            assert isinstance(frame, av.VideoFrame)  # a video track's
            try:
                self._on_frame(frame)
            except Exception as exc:
                logger.exception("whip %s: frame failed", self.id)
                self.end("internal", f"a frame could not be matted: {exc}")

    def _on_frame(self, frame: av.VideoFrame) -> None:
        if self._first_pts is None:
            self._first_pts = frame.pts
        now = time.monotonic()
        self._last_frame_at = now
        self.frames += 1
        arrivals = self._arrivals
        arrivals.append(now)
        while arrivals and now - arrivals[0] > 1.0:
            arrivals.popleft()
        limit = self.settings.whip_max_fps
        if len(arrivals) > FAST_FACTOR * limit:
            self.end(
                "too_fast",
                f"frames arrive at over {FAST_FACTOR * limit:g} a second "
                f"({FAST_FACTOR}x PTQ4VM_WHIP_MAX_FPS); send in real time",
            )
            return
        if len(arrivals) > limit:
            self.discarded += 1
            self.services.metrics.frames_dropped.inc()
            return
        width, height = frame.width, frame.height
        too_big = self._too_big(width, height)
        if too_big is not None:
            self.end("frame_too_big", too_big)
            return
        session = self.session
        if session is None:
            if not self._starting:
                self._starting = True
                self._spawn(self._start(width, height))
            return  # frames before the session runs are not matted
        rgb = frame.to_ndarray(format="rgb24")
        if (width, height) != (session.start.width, session.start.height):
            size = (session.start.width, session.start.height)
            rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8)
        seq = session.offer(rgb.tobytes())
        self._stamps[seq] = (frame.pts, frame.time_base)
        if len(self._stamps) > MAX_PENDING_STAMPS:
            del self._stamps[min(self._stamps)]

    def _too_big(self, width: int, height: int) -> str | None:
        side, pixels = self.settings.max_frame_side, self.settings.max_pixels
        if max(width, height) > side or width * height > pixels:
            return (
                f"a {width}x{height} frame is over the limits (PTQ4VM_MAX_FRAME_SIDE {side}, "
                f"PTQ4VM_MAX_PIXELS {pixels})"
            )
        return None

    async def _start(self, width: int, height: int) -> None:
        """The session, at the first frame's size, with its shape compiled."""
        lease = self._lease
        assert lease is not None
        ratio = resolve_downsample_ratio(self._ratio, width, height)
        problem = network_size_error(width, height, ratio)
        if problem is not None:
            self.end("bad_start", problem)
            return
        try:
            await self.services.compiler.compile(
                lease.engine, height, width, ratio, alpha_only=True
            )
        except Exception as exc:
            logger.warning("engine %s failed to compile: %s", lease.engine.name, exc)
            self.end("model_unavailable", f"model {lease.version} cannot run {width}x{height}")
            return
        if self.phase is Phase.ENDED:
            return
        start = StartMessage(
            type="start", width=width, height=height, input="rgb24", output="alpha_raw",
            downsample_ratio=ratio,
        )  # fmt: skip
        session = WhipSession(
            start, ratio, lease, self.services.scheduler, self.services.metrics,
            client=self.client, output=self._output, background=self._background,
        )  # fmt: skip
        self._lease = None  # the session holds it now
        self.session = session
        self.services.sessions.add(session, self)
        self.services.sessions.stop_waiting()
        self.phase = Phase.STREAMING
        logger.info(
            "whip %s streaming: %dx%d, model %s, ratio %g, output %s",
            self.id, width, height, session.version, ratio, self._output,
        )  # fmt: skip

    # Outbox -----------------------------------------------------------------------------------

    def deliver(self, message: ServerMessage, payload: bytes | None = None) -> None:
        if self.phase is Phase.ENDED:
            return
        if isinstance(message, ErrorMessage):
            self._send({"type": "error", "code": message.code, "message": message.message})
            return
        if not isinstance(message, MatteMessage) or payload is None:
            return
        image = self._image(payload, message.width, message.height)
        self._send(
            {"seq": message.seq, "latency_ms": message.server_ms, "dropped": message.dropped,
             "model": message.model, "t": self._time(message.seq)},
        )  # fmt: skip
        # One frame back per frame received, in timestamp order: a dropped frame older than
        # this matte repeats the last one, a newer one (replaced while this ran) this one.
        for seq in sorted([*message.dropped, message.seq]):
            shown = image if seq >= message.seq else self._last
            if shown is None:
                self._stamps.pop(seq, None)
            else:
                self._emit(shown, seq)
        self._last = image

    def _time(self, seq: int) -> float | None:
        pts, time_base = self._stamps.get(seq, (None, None))
        if pts is None or time_base is None or self._first_pts is None:
            return None
        return round(float((pts - self._first_pts) * time_base), 6)

    def _image(self, payload: bytes, width: int, height: int) -> NDArray[np.uint8]:
        pixels = np.frombuffer(payload, np.uint8)
        if self._output == "alpha":
            return pixels.reshape(height, width)
        if self._output == "side_by_side":
            return pixels.reshape(height, 2 * width, 3)
        return pixels.reshape(height, width, 3)

    def _emit(self, image: NDArray[np.uint8], seq: int) -> None:
        pts, time_base = self._stamps.pop(seq, (None, None))
        if pts is None or (self._emitted is not None and pts <= self._emitted):
            return  # the encoder takes increasing timestamps only
        self._emitted = pts
        frame = av.VideoFrame.from_ndarray(image, format="gray" if image.ndim == 2 else "rgb24")
        frame.pts, frame.time_base = pts, time_base
        self._track.put(frame)

    def backlog(self) -> int:
        """What holds the session's next frame back: frames the encoder has not taken, once
        they are half the queue (a matte and its repeats go out together; below that the
        encoder is keeping up)."""
        waiting = self._track.backlog()
        return waiting if waiting >= MAX_OUT_QUEUE // 2 else 0

    def take_over(self) -> None:  # WHIP sessions are not resumed
        pass

    def _on_taken(self) -> None:
        if self.session is not None and self.session.outbox is self:
            self.session.on_sent()

    def _send(self, obj: dict[str, Any]) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(obj, separators=(",", ":")))

    # Life cycle -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Ends a peer that does not connect in time, or sends no frame for too long."""
        connect = self.settings.whip_connect_timeout_s
        idle = self.settings.idle_timeout_s
        created = time.monotonic()
        while self.phase is not Phase.ENDED:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if self.phase is Phase.CONNECTING and now - created > connect:
                self.end(
                    "connect_timeout",
                    f"ICE and DTLS did not complete in {connect:g} s "
                    "(PTQ4VM_WHIP_CONNECT_TIMEOUT_S)",
                )
            elif self.phase is not Phase.CONNECTING and now - self._last_frame_at > idle:
                self.end("idle_timeout", f"no frame for {idle:g} s (PTQ4VM_IDLE_TIMEOUT_S)")

    def end(self, code: str, message: str) -> None:
        """Ends the peer: capacity and lease freed at once, the connection closed after."""
        if self.phase is Phase.ENDED:
            return
        if code not in ("deleted", "shutdown"):
            self._send({"type": "error", "code": code, "message": message})
        self.phase = Phase.ENDED
        self.reason = f"{code}: {message}"
        logger.info("whip %s ended: %s", self.id, self.reason)
        sessions = self.services.sessions
        if self.session is not None:
            sessions.remove(self.session)
            sessions.leave(self.client, waiting=False)
        else:
            sessions.leave(self.client, waiting=True)
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self._track.stop()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.closing = asyncio.get_running_loop().create_task(self._close())
        self._on_end(self)

    async def _close(self) -> None:
        await asyncio.sleep(CLOSE_GRACE_S)  # the data channel's last message goes out first
        try:
            await self._pc.close()
        except Exception as exc:  # closing a half-made connection may fail; it is gone anyway
            logger.debug("whip %s: close failed: %r", self.id, exc)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
