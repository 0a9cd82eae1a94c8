"""Streaming sessions: per-session recurrent state, latest-frame-wins, resumption.

A session outlives its WebSocket: when the socket drops without `stop` the session is kept,
state and all, for `session_ttl_s` so that `?session=ID` can resume it. Everything here runs
on the event loop; the heavy work goes to the `Scheduler`.

Latest-frame-wins: a session has at most one frame in the scheduler (`inflight`) and one
waiting behind it (`pending`). A newer frame replaces the in-flight one while no worker has
taken it yet, else the pending one; the replaced frame's seq is reported in the next matte's
`dropped`. A client that waits for each matte before sending the next frame never loses one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from ptq4vm_core.engine.base import EngineState, Float32Array, Uint8Array
from server.inference.scheduler import Done, Scheduler, Work
from server.metrics import Metrics
from server.models.registry import ModelLease
from server.streaming.adaptive import AdaptiveRatio, ratio_ladder
from server.streaming.codec import check_raw_size, decode_frame, encode_alpha
from server.streaming.protocol import (
    MatteMessage,
    ServerMessage,
    StartedMessage,
    StartMessage,
    error,
)

logger = logging.getLogger(__name__)

# Mattes waiting to be written to a socket before the session stops feeding the scheduler:
# a client that does not read sees its frames dropped instead of the server's memory grow.
MAX_BACKLOG = 2
# Ids of evicted or expired sessions remembered, so that a resume can say why it failed.
GONE_REMEMBERED = 4096

# A session ID is a bearer capability: whoever knows it can resume the session. A client may
# propose the ID of a new session (`?session=ID` naming no session) when it is at least as long
# as the server's own (`token_urlsafe(16)`, 22 characters): that is how a proxy routing on the ID
# lands a new session and all its resumes on one replica (docs/operations.md, sticky routing).
_PROPOSABLE_ID = re.compile(r"[A-Za-z0-9_-]{22,128}")


def proposable_session_id(value: str) -> bool:
    """Whether `value` may become the ID of a new session."""
    return _PROPOSABLE_ID.fullmatch(value) is not None


class Outbox(Protocol):
    """Where a session's messages go: the attached connection's writer."""

    def deliver(self, message: ServerMessage, payload: bytes | None = None) -> None: ...

    def backlog(self) -> int: ...

    def take_over(self) -> None:
        """The session was resumed on another connection: close this one."""


@dataclass
class _Tag:
    seq: int
    generation: int
    received_at: float


class Session:
    def __init__(
        self,
        start: StartMessage,
        ratio: float,
        lease: ModelLease,
        scheduler: Scheduler,
        metrics: Metrics,
        session_id: str | None = None,
        client: str = "",
    ) -> None:
        """`session_id` is a client's proposal (see `proposable_session_id`); None makes one.
        `client` is the address that started it (capacity per address counts it)."""
        self.id = session_id or secrets.token_urlsafe(16)
        self.client = client
        self.start = start
        self.ratio = ratio
        self.adaptive = (
            AdaptiveRatio(ratio_ladder(ratio, start.width, start.height), start.target_fps)
            if start.downsample_ratio == "adaptive"
            else None
        )
        self.lease = lease
        # A session that named no model follows the active version at each reset.
        self.follows_active = start.model is None
        self.state: EngineState | None = None
        self.generation = 0
        self.next_seq = 0
        self.matted = 0
        self.dropped_total = 0
        self.outbox: Outbox | None = None
        self.detached_at: float | None = None
        self.closed = False
        self._scheduler = scheduler
        self._metrics = metrics
        self._dropped: list[int] = []
        self._inflight: Work | None = None
        self._pending: tuple[_Tag, bytes] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def version(self) -> str:
        return self.lease.version

    def describe(self, resumed: bool, expired: str | None = None) -> StartedMessage:
        """The `started` message."""
        return StartedMessage(
            session=self.id,
            model=self.version,
            engine=self.lease.engine.name,
            downsample_ratio=self.ratio,
            adaptive=self.adaptive is not None,
            width=self.start.width,
            height=self.start.height,
            input=self.start.input,
            output=self.start.output,
            resumed=resumed,
            next_seq=self.next_seq,
            expired=expired,
        )

    # Frames ----------------------------------------------------------------------------------

    def offer(self, data: bytes) -> int:
        """A frame arrived: number it and queue it (latest-frame-wins). Raises FrameError
        (with the seq consumed) for a raw frame of the wrong size."""
        seq = self.next_seq
        self.next_seq += 1
        self._metrics.frames_received.inc()
        if self.start.input == "rgb24":
            check_raw_size(data, self.start.width, self.start.height)
        tag = _Tag(seq, self.generation, time.monotonic())
        work = self._inflight
        if work is not None and not work.dispatched:
            self._drop(work.tag.seq)
            work.tag, work.decode = tag, partial(self._decode, data)
        elif work is not None or self._backed_up():
            if self._pending is not None:
                self._drop(self._pending[0].seq)
            self._pending = (tag, data)
            self._idle.clear()
        else:
            if self._pending is not None:  # left from a detached spell; this frame is newer
                self._drop(self._pending[0].seq)
                self._pending = None
            self._submit(tag, data)
        return seq

    def reset(self, lease: ModelLease | None = None) -> None:
        """Zero the state for every frame not yet started; `lease` switches the model."""
        self.generation += 1
        self.state = None
        if lease is not None:
            old, self.lease = self.lease, lease
            old.release()
        work = self._inflight
        if work is not None and not work.dispatched:
            work.state = None
            work.tag.generation = self.generation
            work.engine, work.model = self.lease.engine, self.lease.version
            work.ratio = self.ratio
        if self._pending is not None:
            self._pending[0].generation = self.generation

    async def drain(self) -> None:
        """Wait until every frame received so far is processed or dropped."""
        await self._idle.wait()

    def on_sent(self) -> None:
        """The connection wrote a message: room for the pending frame, maybe."""
        if self._inflight is None and self._pending is not None and not self._backed_up():
            tag, data = self._pending
            self._pending = None
            self._submit(tag, data)

    def _backed_up(self) -> bool:
        return self.outbox is not None and self.outbox.backlog() >= MAX_BACKLOG

    def _drop(self, seq: int) -> None:
        self._dropped.append(seq)
        self.dropped_total += 1
        self._metrics.frames_dropped.inc()

    def _decode(self, data: bytes) -> Uint8Array:
        return decode_frame(data, self.start.input, self.start.width, self.start.height)

    def _finish(self, fgr: Float32Array | None, alpha: Uint8Array) -> bytes:
        return encode_alpha(alpha, self.start.output)

    def _submit(self, tag: _Tag, data: bytes) -> None:
        work = Work(
            engine=self.lease.engine,
            model=self.lease.version,
            size=(self.start.height, self.start.width),
            ratio=self.ratio,
            state=self.state if tag.generation == self.generation else None,
            decode=partial(self._decode, data),
            finish=self._finish,
            alpha_only=True,  # a stream returns alpha mattes only
            tag=tag,
        )
        self._inflight = work
        self._idle.clear()
        task = asyncio.create_task(self._run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Work) -> None:
        try:
            done: Done | None = await self._scheduler.run(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            done = None
            tag = work.tag
            code = getattr(exc, "code", "internal")
            if code == "internal":
                logger.error("session %s: frame %d failed: %s", self.id, tag.seq, exc)
            self._metrics.frame_errors.labels(code=code).inc()
            self._send(error(code, str(exc), seq=tag.seq))
        self._inflight = None
        if done is not None:
            # work.state is what the frame ran with: a reset may have cleared it before dispatch.
            self._deliver(work, done, fresh=work.state is None)
        if self._pending is not None and not self.closed:
            self.on_sent()
        if self._inflight is None and self._pending is None:
            self._idle.set()

    def _deliver(self, work: Work, done: Done, fresh: bool) -> None:
        tag: _Tag = work.tag
        if tag.generation == self.generation:
            self.state = done.state
            self._adapt(work, done)
        self.matted += 1
        dropped, self._dropped = self._dropped, []
        message = MatteMessage(
            seq=tag.seq,
            model=work.model,
            dropped=dropped,
            fresh=fresh,
            width=self.start.width,
            height=self.start.height,
            format="png" if self.start.output == "alpha_png" else "raw",
            downsample_ratio=work.ratio,
            batch=done.batch,
            queue_ms=round(done.queue_s * 1e3, 3),
            decode_ms=round(done.decode_s * 1e3, 3),
            infer_ms=round(done.infer_s * 1e3, 3),
            encode_ms=round(done.encode_s * 1e3, 3),
            server_ms=round((time.monotonic() - tag.received_at) * 1e3, 3),
        )
        self._send(message, done.payload)

    def _adapt(self, work: Work, done: Done) -> None:
        """An adaptive session's frame cost, observed; a new ratio zeroes the state (its
        sizes follow the network's resolution), so the next frame says `fresh`."""
        if self.adaptive is None or work.ratio != self.ratio:
            return
        ratio = self.adaptive.observe((done.decode_s + done.infer_s + done.encode_s) * 1e3)
        if ratio is not None:
            logger.info("session %s: ratio %g -> %g (adaptive)", self.id, self.ratio, ratio)
            self.ratio = ratio
            self.reset()

    def _send(self, message: ServerMessage, payload: bytes | None = None) -> None:
        if self.outbox is not None:
            self.outbox.deliver(message, payload)

    def close(self) -> None:
        """End the session: its lease is released; frames still running are discarded."""
        if self.closed:
            return
        self.closed = True
        self.outbox = None
        self._pending = None
        for task in self._tasks:
            task.cancel()
        self.lease.release()
