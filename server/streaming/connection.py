"""One WebSocket connection of `/v1/stream`, as an explicit state machine (DESIGN 4.3).

    AWAITING_START --start--> STREAMING --stop--> STOPPING --> CLOSED
          |                      |  frames, reset, ping
          +--------- error / disconnect / idle ---------------> CLOSED

A reader coroutine takes messages off the socket; one writer coroutine sends everything the
session produces, so a matte's JSON and its binary payload always go out back to back.

Past 400 lines on purpose: the state machine, its reader and its writer are one object whose
transitions are read together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum
from typing import Protocol

from starlette.websockets import WebSocket

from ptq4vm_core.engine import ModelNotFoundError
from ptq4vm_core.engine.base import EngineState
from ptq4vm_core.pipeline import resolve_downsample_ratio
from server.addresses import client_address, parse_networks
from server.inference.compiles import ShapeCompiler
from server.inference.scheduler import Scheduler
from server.metrics import Metrics
from server.models.registry import ModelLease, ModelRegistry, ModelUnavailableError
from server.settings import Settings
from server.streaming.capacity import SessionManager
from server.streaming.codec import FrameError
from server.streaming.protocol import (
    Close,
    PongMessage,
    ProtocolError,
    ServerMessage,
    StartMessage,
    StoppedMessage,
    dump,
    error,
    parse_control,
    parse_start,
)
from server.streaming.session import Session, proposable_session_id

logger = logging.getLogger(__name__)


class Phase(Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPING = "stopping"
    CLOSED = "closed"


_Item = tuple[ServerMessage | None, bytes | None, tuple[int, str] | None]

# Messages waiting for the writer. Mattes are bounded by the session (MAX_BACKLOG); errors and
# pongs are answers to the client's own messages, so a client that sends without reading
# would grow this without bound: past it, the connection is closed (1008, `slow_reader`).
MAX_OUTBOX = 64
# Text (control) messages a connection may send: TEXT_BURST at once, TEXT_RATE a second on
# average; a flood past it is a protocol violation (1008, `too_many_messages`), so one client
# cannot keep the event loop parsing its JSON.
TEXT_RATE = 50.0
TEXT_BURST = 100.0
# How long a closing connection waits for its writer (a peer that reads nothing blocks it).
WRITER_GRACE_S = 1.0


class StreamServices(Protocol):
    """What a connection uses of the app's services (`server.services.Services` has them)."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    scheduler: Scheduler[EngineState]
    sessions: SessionManager
    compiler: ShapeCompiler


class Connection:
    """Serves one socket; implements the session's `Outbox`."""

    def __init__(self, websocket: WebSocket, services: StreamServices, resume: str | None) -> None:
        self.ws = websocket
        self.services = services
        self.settings = services.settings
        self.resume_id = resume
        # An ID that names no session becomes the new session's ID when it has the right form.
        self.proposed_id = resume if resume is not None and proposable_session_id(resume) else None
        self.phase = Phase.AWAITING_START
        self.session: Session | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._closing = False
        self.client = client_address(
            websocket.scope, parse_networks(services.settings.trusted_proxies)
        )
        self._waiting = False  # admitted, no session yet (counted against capacity)
        self._gone: str | None = None  # why the session it tried to resume is gone
        self._text_tokens = TEXT_BURST
        self._text_at = time.monotonic()

    # Outbox -----------------------------------------------------------------------------------

    def deliver(self, message: ServerMessage, payload: bytes | None = None) -> None:
        if self._closing:
            return
        if self._queue.qsize() >= MAX_OUTBOX:
            self._close(
                Close.POLICY,
                "slow_reader",
                f"{MAX_OUTBOX} messages wait to be read by this client; read what you are sent",
            )
            return
        self._queue.put_nowait((message, payload, None))

    def backlog(self) -> int:
        return self._queue.qsize()

    def take_over(self) -> None:
        self._close(Close.GOING_AWAY, "session_resumed", "the session was resumed elsewhere")

    # Life cycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        writer = asyncio.create_task(self._write_loop())
        sessions = self.services.sessions
        refusal = sessions.admit(
            self.client, self.resume_id, self.settings.max_connections_per_client
        )
        try:
            if refusal is None:
                self._waiting = True
                await self._read_loop()
            elif refusal == "at_capacity":
                error_ = self._at_capacity()
                self._close(Close.AT_CAPACITY, error_.code, str(error_))
            else:
                limit = self.settings.max_connections_per_client
                self._close(
                    Close.AT_CAPACITY,
                    refusal,
                    f"{limit} connections from this address are open "
                    "(PTQ4VM_MAX_CONNECTIONS_PER_CLIENT); close one first",
                )
        finally:
            if self.session is not None and self.session.outbox is self:
                sessions.detach(self.session)
            if refusal is None:
                sessions.leave(self.client, waiting=self._waiting)
                self._waiting = False
            self.phase = Phase.CLOSED
            self._close(Close.NORMAL, None, None)
            try:
                await asyncio.wait_for(writer, WRITER_GRACE_S)
            except TimeoutError:  # the peer reads nothing: the socket is dropped with us
                logger.info("connection from %s: writer stuck, dropping it", self.client)

    def _got_session(self) -> None:
        if self._waiting:
            self._waiting = False
            self.services.sessions.stop_waiting()

    def _close(self, code: Close, err: str | None, message: str | None) -> None:
        """Queue an optional error message, then the close frame; nothing is sent after it."""
        if self._closing:
            return
        if err is not None and message is not None:
            self._queue.put_nowait((error(err, message), None, None))
        self._queue.put_nowait((None, None, (int(code), message or "")))
        self._closing = True
        if code not in (Close.NORMAL, Close.GOING_AWAY):
            self.services.metrics.sessions_refused.labels(code=str(int(code))).inc()

    async def _write_loop(self) -> None:
        try:
            while True:
                message, payload, close = await self._queue.get()
                if close is not None:
                    # A close reason is limited to 123 bytes by RFC 6455.
                    await self.ws.close(close[0], close[1].encode()[:120].decode(errors="ignore"))
                    return
                assert message is not None
                await self.ws.send_text(dump(message))
                if payload is not None:
                    await self.ws.send_bytes(payload)
                if self.session is not None and self.session.outbox is self:
                    self.session.on_sent()
        except Exception as exc:  # the peer is gone; the reader sees the disconnect
            logger.debug("websocket send failed: %r", exc)
            self._closing = True

    async def _read_loop(self) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self.settings.idle_timeout_s):
                    message = await self.ws.receive()
            except TimeoutError:
                self._close(
                    Close.GOING_AWAY,
                    "idle_timeout",
                    f"no message for {self.settings.idle_timeout_s:g} s (PTQ4VM_IDLE_TIMEOUT_S)",
                )
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    await self._on_frame(message["bytes"])
                else:
                    await self._on_text(message.get("text") or "")
            except ProtocolError as exc:
                if exc.close is None:
                    self.deliver(error(exc.code, str(exc)))
                else:
                    self._close(exc.close, exc.code, str(exc))

    # Messages ---------------------------------------------------------------------------------

    async def _on_frame(self, data: bytes) -> None:
        limit = self.settings.max_message_bytes
        if len(data) > limit:
            raise ProtocolError(
                "too_big", f"message of {len(data)} bytes is over {limit}", Close.TOO_BIG
            )
        if self.phase is Phase.AWAITING_START and self.resume_id is not None:
            session = self._resumable()
            if session is not None:
                # Resumed by its first frame: the client did not ask for `started`.
                self._attach(session, announce=False)
            elif self._gone is not None:
                message = f"{self._gone}; reconnect and send a start message to begin anew"
                raise ProtocolError("session_expired", message, Close.POLICY)
        if self.phase is not Phase.STREAMING or self.session is None:
            raise ProtocolError(
                "not_started",
                f"binary frame in state {self.phase.value}; send a start message first",
                Close.POLICY,
            )
        try:
            self.session.offer(data)
        except FrameError as exc:
            self.services.metrics.frame_errors.labels(code=exc.code).inc()
            self.deliver(error(exc.code, str(exc), seq=self.session.next_seq - 1))

    def _charge_text(self) -> None:
        now = time.monotonic()
        self._text_tokens = min(TEXT_BURST, self._text_tokens + (now - self._text_at) * TEXT_RATE)
        self._text_at = now
        if self._text_tokens < 1:
            raise ProtocolError(
                "too_many_messages",
                f"more than {TEXT_RATE:g} text messages a second (bursts of {TEXT_BURST:g})",
                Close.POLICY,
            )
        self._text_tokens -= 1

    async def _on_text(self, text: str) -> None:
        self._charge_text()
        obj = parse_control(text, self.settings.max_text_bytes)
        kind = obj["type"]
        if kind == "ping":
            self.deliver(PongMessage(id=obj.get("id")))
        elif kind == "start":
            if self.phase is not Phase.AWAITING_START:
                raise ProtocolError(
                    "already_started",
                    f"start in state {self.phase.value}; one session per connection",
                    Close.POLICY,
                )
            start = parse_start(obj, self.settings.max_frame_side, self.settings.max_pixels)
            await self._start(start)
        elif self.phase is not Phase.STREAMING or self.session is None:
            raise ProtocolError(
                "not_started", f"{kind} in state {self.phase.value}; expected start", Close.POLICY
            )
        elif kind == "reset":
            await self._reset(self.session)
        else:
            await self._stop(self.session)

    async def _start(self, start: StartMessage) -> None:
        if self.resume_id is not None:
            session = self._resumable()
            if session is not None:
                self._check_same(session, start)
                self._attach(session, announce=True)
                return
        sessions = self.services.sessions
        if not sessions.has_room():
            raise self._at_capacity()
        lease = await self._acquire(start.model)
        if not sessions.has_room():  # filled while the model loaded
            lease.release()
            raise self._at_capacity()
        ratio = resolve_downsample_ratio(start.fixed_ratio, start.width, start.height)
        await self._compile_shape(lease, start, ratio)
        proposed = self.proposed_id
        if proposed is not None and sessions.get(proposed) is not None:
            proposed = None  # another connection started it while the model loaded
        session = Session(
            start, ratio, lease, self.services.scheduler, self.services.metrics, proposed,
            client=self.client,
        )  # fmt: skip
        self.session = session
        sessions.add(session, self)
        self._got_session()
        self.phase = Phase.STREAMING
        # A resume of a session that is gone says why (`expired`).
        self.deliver(session.describe(resumed=False, expired=self._gone))
        logger.info(
            "session %s started: %dx%d %s, model %s, ratio %g",
            session.id,
            start.width,
            start.height,
            start.input,
            session.version,
            ratio,
        )

    def _resumable(self) -> Session | None:
        """The session to resume, once; None when it is gone (then `_gone` says why, where
        it existed recently) or never existed."""
        assert self.resume_id is not None
        sessions = self.services.sessions
        session = sessions.get(self.resume_id)
        reason = sessions.gone(self.resume_id) if session is None else None
        self._gone = None if reason is None else f"session {self.resume_id} is gone: {reason}"
        self.resume_id = None  # one try; otherwise a new session starts
        return session

    def _attach(self, session: Session, *, announce: bool) -> None:
        previous = session.outbox
        self.services.sessions.attach(session, self)
        self._got_session()
        if previous is not None and previous is not self:
            previous.take_over()
        self.session = session
        self.phase = Phase.STREAMING
        if announce:
            self.deliver(session.describe(resumed=True))
        logger.info("session %s resumed at seq %d", session.id, session.next_seq)

    @staticmethod
    def _check_same(session: Session, start: StartMessage) -> None:
        theirs = (start.width, start.height, start.input, start.output)
        ours = (
            session.start.width,
            session.start.height,
            session.start.input,
            session.start.output,
        )
        if theirs != ours:
            raise ProtocolError(
                "bad_start",
                f"session {session.id} streams {ours[0]}x{ours[1]} {ours[2]} -> {ours[3]}; a "
                f"resume must match it (got {theirs[0]}x{theirs[1]} {theirs[2]} -> {theirs[3]})",
                Close.POLICY,
            )

    def _at_capacity(self) -> ProtocolError:
        limit = self.services.sessions.max_sessions
        return ProtocolError(
            "at_capacity",
            f"server at capacity ({limit} sessions); try again later",
            Close.AT_CAPACITY,
        )

    async def _compile_shape(self, lease: ModelLease, start: StartMessage, ratio: float) -> None:
        """Compile the engine for this stream's shape before the first frame (once per model
        and shape: later sessions of that shape find it ready), in the compile threads
        (`server.inference.compiles`): a compile takes up to seconds and must hold up neither
        the event loop nor other sessions' frames."""
        try:
            await self.services.compiler.compile(
                lease.engine, start.height, start.width, ratio, alpha_only=True
            )
        except Exception as exc:
            lease.release()
            logger.warning("engine %s failed to compile: %s", lease.engine.name, exc)
            raise ProtocolError(
                "model_unavailable",
                f"model {lease.version} cannot run {start.width}x{start.height} at ratio {ratio}",
                Close.INTERNAL,
            ) from None

    async def _acquire(self, model: str | None) -> ModelLease:
        registry = self.services.registry
        try:
            return await asyncio.to_thread(registry.acquire, model)
        except ModelNotFoundError as exc:
            raise ProtocolError("unknown_model", str(exc), Close.POLICY) from None
        except ModelUnavailableError as exc:
            raise ProtocolError("model_unavailable", str(exc), Close.INTERNAL) from None

    async def _reset(self, session: Session) -> None:
        lease = None
        if session.follows_active and self.services.registry.active() != session.version:
            try:
                lease = await self._acquire(None)
            except ProtocolError as exc:  # keep the old model rather than end the session
                self.deliver(error(exc.code, f"{exc}; the session keeps {session.version}"))
        session.reset(lease)

    async def _stop(self, session: Session) -> None:
        self.phase = Phase.STOPPING
        await session.drain()
        self.deliver(
            StoppedMessage(
                session=session.id,
                frames=session.next_seq,
                matted=session.matted,
                dropped=session.dropped_total,
            )
        )
        self.services.sessions.remove(session)
        self.session = None
        self._close(Close.NORMAL, None, "stopped")
        logger.info("session %s stopped after %d frames", session.id, session.next_seq)
