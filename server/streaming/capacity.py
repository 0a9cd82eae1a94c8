"""Every session of the process: capacity, lookup for resumption, expiry of detached ones, and
the per-address share (DESIGN 4.3.9; `SessionManager`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from server.inference.scheduler import Scheduler
from server.metrics import Metrics
from server.streaming.session import GONE_REMEMBERED, Outbox, Session

logger = logging.getLogger(__name__)


class SessionManager:
    """Every session of the process: capacity, lookup for resumption, expiry of detached ones.

    Capacity (`max_sessions`) counts every session, detached ones included (they hold a model
    and a state until they expire), and every connection admitted that has no session yet.
    Per client address, its open connections and its detached sessions together are bounded
    (`per_client` in `admit`), so one address cannot hold more than its share by starting
    sessions and vanishing. A detached session never keeps a live client out (DESIGN 4.3.9):
    when a new connection or session needs room, detached sessions are evicted first, oldest
    first (the address's own, for its share), before anyone is refused. A client resuming an
    evicted or expired session is told so (`gone`) and may start afresh.
    """

    def __init__(
        self, *, max_sessions: int, ttl_s: float, scheduler: Scheduler, metrics: Metrics
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.scheduler = scheduler
        self.metrics = metrics
        self._sessions: dict[str, Session] = {}
        # Connections admitted without a session yet, and open connections per client address.
        self.waiting = 0
        self._clients: Counter[str] = Counter()
        # Why recent sessions are gone (evicted, expired), for a client that tries to resume one.
        self._gone: OrderedDict[str, str] = OrderedDict()

    def attached(self) -> int:
        return sum(1 for s in self._sessions.values() if s.outbox is not None)

    def has_room(self) -> bool:
        """Room for a new session started by a waiting connection (counted in `waiting`),
        made by evicting detached sessions where needed."""
        return self._make_room(len(self._sessions) + self.waiting - self.max_sessions)

    def admit(self, client: str, resume: str | None, per_client: int) -> str | None:
        """Admit a new connection from `client`: None, or why not (`too_many_connections`,
        `at_capacity`). The address's open connections and detached sessions count against
        `per_client` (its oldest detached session is evicted to make room); the server's
        sessions and waiting connections against `max_sessions` (the oldest detached session
        of any address is evicted first). A connection resuming an existing session is never
        at capacity: its session is counted already. An admitted connection waits until it
        gets a session (`stop_waiting`) and leaves with `leave`."""
        target = self.get(resume) if resume is not None else None
        spare = {target.id} if target is not None else set()
        if self._clients[client] + 1 > per_client:
            return "too_many_connections"
        mine = [s for s in self._detached() if s.client == client and s.id not in spare]
        over = self._clients[client] + 1 + len(mine) - per_client
        for session in mine[: max(0, over)]:
            self._evict(session, f"evicted: its address opened more than {per_client} sessions")
        needed = len(self._sessions) + self.waiting + 1 - self.max_sessions
        if target is None and not self._make_room(needed, spare):
            return "at_capacity"
        self._clients[client] += 1
        self.waiting += 1
        return None

    def gone(self, session_id: str) -> str | None:
        """Why session `session_id` no longer exists (evicted, expired), if it did recently."""
        return self._gone.get(session_id)

    def _detached(self) -> list[Session]:
        """Detached sessions, oldest detachment first."""
        detached = [s for s in self._sessions.values() if s.detached_at is not None]
        return sorted(detached, key=lambda s: s.detached_at or 0.0)

    def _make_room(self, needed: int, spare: set[str] | None = None) -> bool:
        """Evict up to `needed` detached sessions (oldest first, never those in `spare`);
        whether that made the room."""
        if needed <= 0:
            return True
        victims = [s for s in self._detached() if s.id not in (spare or set())][:needed]
        for session in victims:
            self._evict(session, "evicted: the server needed its capacity for a live client")
        return len(victims) >= needed

    def _evict(self, session: Session, reason: str) -> None:
        logger.info("session %s %s", session.id, reason)
        self.metrics.sessions_evicted.inc()
        self._forget(session, reason)

    def _forget(self, session: Session, reason: str) -> None:
        self._gone[session.id] = reason
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)
        self.remove(session)

    def stop_waiting(self) -> None:
        self.waiting -= 1

    def leave(self, client: str, *, waiting: bool) -> None:
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]
        if waiting:
            self.waiting -= 1

    def add(self, session: Session, outbox: Outbox) -> None:
        self._sessions[session.id] = session
        self.metrics.sessions_started.inc()
        self.attach(session, outbox)

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and self._expired(session, time.monotonic()):
            self._forget(session, f"expired after {self.ttl_s:.0f} s detached")
            return None
        return session

    def attach(self, session: Session, outbox: Outbox) -> None:
        session.outbox = outbox
        session.detached_at = None
        self._update_gauges()

    def detach(self, session: Session) -> None:
        if session.closed:
            return
        session.outbox = None
        session.detached_at = time.monotonic()
        self._update_gauges()
        logger.info("session %s detached; resumable for %.0f s", session.id, self.ttl_s)

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        session.close()
        self._update_gauges()

    def reap(self) -> int:
        """Remove detached sessions past their TTL; returns how many."""
        now = time.monotonic()
        expired = [s for s in self._sessions.values() if self._expired(s, now)]
        for session in expired:
            logger.info("session %s expired after %.0f s detached", session.id, self.ttl_s)
            self._forget(session, f"expired after {self.ttl_s:.0f} s detached")
        return len(expired)

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.ttl_s / 4))
            self.reap()

    def close(self) -> None:
        for session in list(self._sessions.values()):
            self.remove(session)

    def _expired(self, session: Session, now: float) -> bool:
        return session.detached_at is not None and now - session.detached_at > self.ttl_s

    def _update_gauges(self) -> None:
        attached = self.attached()
        self.metrics.sessions_active.set(attached)
        self.metrics.sessions_detached.set(len(self._sessions) - attached)
