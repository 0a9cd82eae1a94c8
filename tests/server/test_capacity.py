"""Fair capacity (DESIGN 4.3.9, issue 26): two real client addresses on loopback (127.0.0.1 and
127.0.0.2 as source addresses). Detached sessions never keep a live client out; one address
holds at most its share, attached and detached together."""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.server.client import Stream
from tests.server.conftest import RunningServer, ServerFactory

HOSTILE, FRIEND = "127.0.0.2", "127.0.0.1"
MAX_SESSIONS, PER_CLIENT = 6, 3
FIRST_MATTE_S = 2.0


@pytest.fixture
def tight(start_server: ServerFactory) -> RunningServer:
    """Few sessions, a small share per address, and detached sessions kept for minutes (so
    only eviction can free them within a test)."""
    return start_server(
        max_sessions=MAX_SESSIONS, max_connections_per_client=PER_CLIENT, session_ttl_s=600.0
    )


def start_and_vanish(server: RunningServer, source: str, count: int) -> list[str]:
    """`count` times: connect from `source`, start a session, drop the TCP connection."""
    ids = []
    clients = server.services.sessions._clients
    for _ in range(count):
        stream = server.stream(source=source, input="rgb24").__enter__()
        ids.append(stream.started["session"])
        stream.vanish()
        deadline = time.monotonic() + 10
        while clients[source]:  # the server noticed the drop (as a real flood waits for 1013)
            assert time.monotonic() < deadline, "the dropped connection is still counted"
            time.sleep(0.01)
    return ids


def detached(server: RunningServer, source: str, timeout: float = 10.0) -> int:
    """The server's detached sessions from `source`, once every vanished socket is noticed."""
    sessions = server.services.sessions
    deadline = time.monotonic() + timeout
    while sessions.waiting or sessions.attached():
        assert time.monotonic() < deadline, "vanished connections still counted as open"
        time.sleep(0.05)
    return sum(1 for s in sessions._sessions.values() if s.client == source)


def first_matte_s(server: RunningServer, frame: bytes, source: str = FRIEND) -> float:
    started = time.monotonic()
    with server.stream(source=source, input="rgb24") as stream:
        assert stream.started["type"] == "started"
        stream.matte(frame)
    return time.monotonic() - started


def test_a_start_and_vanish_flood_leaves_another_address_served(
    tight: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    frame = clip_rgb[0].tobytes()
    first_matte_s(tight, frame)  # the shape compiled before anything is timed
    start_and_vanish(tight, HOSTILE, 5 * MAX_SESSIONS)
    # The flooding address keeps its share, no more, attached and detached together.
    assert detached(tight, HOSTILE) == PER_CLIENT
    assert first_matte_s(tight, frame) <= FIRST_MATTE_S
    evicted = tight.services.metrics.sessions_evicted._value.get()
    assert evicted >= 5 * MAX_SESSIONS - PER_CLIENT


def test_detached_sessions_are_evicted_before_anyone_is_refused(
    tight: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """Every session of the server detached (from two other addresses, each within its share):
    a live client still gets in at once, by evicting the oldest; a client resuming an evicted
    session is told why and starts afresh."""
    frame = clip_rgb[0].tobytes()
    old = start_and_vanish(tight, "127.0.0.3", PER_CLIENT)
    start_and_vanish(tight, HOSTILE, PER_CLIENT)
    assert len(tight.services.sessions._sessions) == MAX_SESSIONS
    assert first_matte_s(tight, frame) <= FIRST_MATTE_S
    with Stream(tight.ws, session=old[0], source="127.0.0.3", input="rgb24") as s:
        assert s.started["resumed"] is False
        assert "evicted" in s.started["expired"], s.started
        assert s.matte(frame)[0]["type"] == "matte"
    # Resumed by a first frame instead: told why as the connection closes.
    with Stream(tight.ws, session=old[1], source="127.0.0.3", start=False) as s:
        s.conn.send(frame)
        told = s.recv_json()
        assert (told["type"], told["code"]) == ("error", "session_expired"), told
        assert "evicted" in told["message"]


def test_a_detached_session_resumes_while_there_is_room(
    tight: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    frame = clip_rgb[0].tobytes()
    with tight.stream(source=HOSTILE, input="rgb24") as first:
        session = first.started["session"]
        first.matte(frame)
        first.vanish()
    start_and_vanish(tight, FRIEND, PER_CLIENT)  # the other address's share, all detached
    with Stream(tight.ws, session=session, source=HOSTILE, input="rgb24") as again:
        assert again.started["resumed"] is True
        assert again.started["session"] == session
        meta, _ = again.matte(frame)
        assert meta["seq"] == 1


def test_an_address_at_its_share_of_live_sessions_is_refused(
    tight: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """Attached sessions are never evicted: an address with its whole share live gets 1013."""
    streams = [tight.stream(source=HOSTILE, input="rgb24").__enter__() for _ in range(PER_CLIENT)]
    try:
        with pytest.raises(Exception, match=r"1013|too_many"), tight.stream(source=HOSTILE):
            pass
        assert first_matte_s(tight, clip_rgb[0].tobytes()) <= FIRST_MATTE_S
    finally:
        for stream in streams:
            stream.close()


def lockstep_latencies(stream: Stream, frame: bytes, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.monotonic()
        stream.matte(frame)
        out.append(time.monotonic() - started)
    return out


def test_a_frame_flood_leaves_another_sessions_latency_within_bounds(
    tight: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """One session sends frames as fast as the socket takes them (reading its mattes, so it is
    not cut off as a slow reader); another, in lockstep from another address, keeps its
    latency: the scheduler serves streams round-robin and drops the flooder's stale frames."""
    frame = clip_rgb[0].tobytes()
    stop = threading.Event()
    with tight.stream(source=FRIEND, input="rgb24") as witness:
        lockstep_latencies(witness, frame, 3)  # warm
        calm = statistics.median(lockstep_latencies(witness, frame, 15))
        with tight.stream(source=HOSTILE, input="rgb24") as flooder:
            received = []

            def drain() -> None:
                with contextlib.suppress(Exception):
                    while not stop.is_set():
                        received.append(flooder.conn.recv(timeout=1))

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()

            def flood() -> None:
                with contextlib.suppress(Exception):
                    while not stop.is_set():
                        flooder.conn.send(frame)

            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            try:
                time.sleep(0.5)
                loaded = lockstep_latencies(witness, frame, 15)
            finally:
                stop.set()
                sender.join(timeout=10)
                reader.join(timeout=10)
    # Round-robin with one other stream: about two frames' time; the bound leaves room for a
    # loaded machine, not for a queue behind the flood (which would grow with its length).
    assert statistics.median(loaded) <= 4 * calm + 0.5, (calm, loaded)
    assert max(loaded) <= 10 * calm + 2.0, (calm, loaded)
    mattes = [json.loads(m) for m in received if isinstance(m, str)]
    assert any(m.get("dropped") for m in mattes if m["type"] == "matte"), "nothing was dropped"
