"""A WHIP publisher (RFC 9725) for the service's `POST /v1/whip` (DESIGN 4.6), on aiortc:
frames (numpy RGB) go out as a VP8 video track paced at `fps`; the matted track comes back on
the same peer connection, and the data channel `ptq4vm` brings one stats message per matte.

    publisher = WhipPublisher("http://127.0.0.1:8000/v1/whip", output="alpha")
    result = await publisher.run(frames, fps=15)
    result.frames[i]          # the returned image for input frame i (None where none came)
    result.latencies_s        # capture to returned frame, frames with a matte of their own

Needs the `webrtc` extra (`pip install ptq4vm-client[webrtc]`).

Matching returned frames to input frames: the server sends one frame back per frame it
matted or dropped (a dropped frame repeats the last matte), with the input's timestamp; each
stats message says how far (`t`, seconds) its frame is from the first frame the server received.
The first returned frame is the first matte, so timestamps from there give every returned
frame's input index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlencode, urljoin

import httpx
import numpy as np
from numpy.typing import NDArray

from ptq4vm_client.errors import Ptq4vmError

try:
    import av
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
    from aiortc.codecs import vpx
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "ptq4vm_client.whip needs aiortc: pip install 'ptq4vm-client[webrtc]'"
    ) from exc

Output = Literal["composite", "alpha", "side_by_side"]
CLOCK = 90_000  # RTP's video clock
TIME_BASE = Fraction(1, CLOCK)
CHANNEL = "ptq4vm"


class WhipError(Ptq4vmError):
    """The server refused the offer (`status`, its message) or ended the session (`code`)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def pin_vp8_bitrate(bits_per_second: int) -> None:
    """Pins aiortc's VP8 encoders of this process at `bits_per_second` (aiortc otherwise
    adapts between 0.25 and 1.5 Mbit/s): what a quality measurement wants."""
    vpx.MIN_BITRATE = vpx.DEFAULT_BITRATE = vpx.MAX_BITRATE = bits_per_second


@dataclass
class WhipResult:
    """What a run brought back. `frames[i]`: the returned image for input frame i (H x W grey
    for `alpha`, H x W x 3 RGB otherwise), None where none came; `stats`: the data channel's
    messages; `latencies_s`: capture to returned frame, for frames matted themselves."""

    sent: int
    frames: list[NDArray[np.uint8] | None]
    stats: list[dict[str, Any]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    location: str = ""
    seconds: float = 0.0

    @property
    def matted(self) -> int:
        return sum(1 for s in self.stats if "seq" in s)

    @property
    def dropped(self) -> int:
        return sum(len(s.get("dropped", [])) for s in self.stats)


class _Source(MediaStreamTrack):
    """Frames from an iterator, paced at `fps`, stamped i / fps."""

    kind = "video"

    def __init__(self, frames: Iterator[NDArray[np.uint8]], fps: float) -> None:
        super().__init__()
        self._frames = frames
        self._step = round(CLOCK / fps)
        self._interval = 1 / fps
        self._start: float | None = None
        self.sent_at: list[float] = []
        self.done = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        index = len(self.sent_at)
        now = time.monotonic()
        if self._start is None:
            self._start = now
        wait = self._start + index * self._interval - now
        if wait > 0:
            await asyncio.sleep(wait)
        rgb = await asyncio.to_thread(next, self._frames, None)
        if rgb is None:
            self.done.set()
            self.stop()
            raise MediaStreamError
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = index * self._step, TIME_BASE
        self.sent_at.append(time.monotonic())
        return frame


class WhipPublisher:
    """Publishes frames to `url` (`http://HOST:PORT/v1/whip`) and collects what comes back."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        model: str | None = None,
        downsample_ratio: float | None = None,
        output: Output = "composite",
        background: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        params: dict[str, str] = {"output": output}
        if model is not None:
            params["model"] = model
        if downsample_ratio is not None:
            params["downsample_ratio"] = f"{downsample_ratio:g}"
        if background is not None:
            params["background"] = background
        self.url = f"{url}?{urlencode(params)}"
        self.output = output
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/sdp"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    async def run(
        self,
        frames: Iterable[NDArray[np.uint8]],
        *,
        fps: float = 15.0,
        tail_s: float = 2.0,
        on_frame: Callable[[int, NDArray[np.uint8]], None] | None = None,
    ) -> WhipResult:
        """Sends `frames` at `fps`, then waits up to `tail_s` for the last frames back, and
        ends the session (DELETE). WhipError when the server refuses or ends it."""
        source = _Source(iter(frames), fps)
        pc = RTCPeerConnection()
        pc.addTransceiver(source, direction="sendrecv")
        channel = pc.createDataChannel(CHANNEL)
        result = WhipResult(sent=0, frames=[])
        returned: list[tuple[float, int, NDArray[np.uint8]]] = []  # (arrival, rtp ts, image)
        ended: list[dict[str, Any]] = []
        last_arrival = [time.monotonic()]

        stopped = asyncio.Event()  # the server ended the session, or the connection dropped

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            obj = json.loads(message)
            if obj.get("type") == "error":
                ended.append(obj)
                stopped.set()
            else:
                result.stats.append(obj)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                stopped.set()

        async def consume(track: MediaStreamTrack) -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                assert isinstance(frame, av.VideoFrame)
                image = np.asarray(
                    frame.to_ndarray(format="gray" if self.output == "alpha" else "rgb24"), np.uint8
                )
                last_arrival[0] = time.monotonic()
                returned.append((last_arrival[0], int(frame.pts or 0), image))

        tasks: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
        started = time.monotonic()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                answer = await http.post(
                    self.url, content=pc.localDescription.sdp, headers=self._headers
                )
                if answer.status_code != 201:
                    raise WhipError(
                        f"WHIP offer refused: {answer.status_code} {answer.text}",
                        status=answer.status_code,
                    )
                result.location = urljoin(self.url, answer.headers["location"])
                await pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
                waits = [asyncio.ensure_future(e.wait()) for e in (source.done, stopped)]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
                while time.monotonic() - last_arrival[0] < tail_s and not stopped.is_set():
                    await asyncio.sleep(0.1)
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(result.location, headers=self._headers)
        finally:
            for task in tasks:
                task.cancel()
            await pc.close()
        result.seconds = time.monotonic() - started
        result.sent = len(source.sent_at)
        if ended and ended[0].get("code") not in ("deleted",):
            error = ended[0]
            raise WhipError(
                f"the server ended the session: {error.get('code')}: {error.get('message')}",
                code=error.get("code"),
            )
        self._place(result, returned, source.sent_at, fps)
        return result

    @staticmethod
    def _place(
        result: WhipResult,
        returned: list[tuple[float, int, NDArray[np.uint8]]],
        sent_at: list[float],
        fps: float,
    ) -> None:
        """Each returned frame at its input index (see the module docstring)."""
        result.frames = [None] * len(sent_at)
        mattes = [s for s in result.stats if "t" in s]
        if not returned or not mattes:
            return
        first_t = float(mattes[0]["t"])
        first_ts = returned[0][1]
        matted = {round(float(s["t"]) * fps) for s in mattes}
        for arrival, ts, image in returned:
            t = first_t + ((ts - first_ts) % 2**32) / CLOCK
            index = round(t * fps)
            if 0 <= index < len(sent_at):
                result.frames[index] = image
                if index in matted:
                    result.latencies_s.append(arrival - sent_at[index])
