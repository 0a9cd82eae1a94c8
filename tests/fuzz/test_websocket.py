"""Hypothesis-generated conversations on `/v1/stream` against a real server (issue 9): start
messages of every shape (sound, tiny, huge, wrong types), control messages known and not,
arbitrary JSON and text, random binary frames (some of exactly the declared rgb24 size, so
they reach the engine), random `?session=` values, and raw garbage on the wire after the
handshake; and the hostile messages of issue 18: JSON nested thousands deep, text past the
text and message limits, pings with huge or non-scalar ids, bursts past the text-message
rate, and PNG/JPEG frames declaring far more pixels than they carry (decompression bombs).
Every answer must be one of the documented messages or close codes; nothing may close with
1011 or log an error; a witness session streams throughout; and once the fuzzer is done,
every connection it opened has been given back (a fresh client gets its full quota)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.faults.rawws import RawClient
from tests.faults.serve import gauge
from tests.security.media import jpeg_declaring, png_declaring
from tests.server.conftest import RunningServer, ServerFactory
from tests.server.test_stream_errors import Witness

MAX_MESSAGE_BYTES = 96 * 1024  # the witness sends 176x144 rgb24 frames: 76032 bytes
MAX_TEXT_BYTES = 64 * 1024  # the default PTQ4VM_MAX_TEXT_BYTES
END = '{"type":"pong","id":"fuzz-end"}'
ACTIVE = "ptq4vm_stream_sessions_active"
DETACHED = "ptq4vm_stream_sessions_detached"
SERVER_MESSAGES = {"started", "matte", "error", "stopped", "pong"}
# docs/server.md, "Errors and close codes"; `internal` (an engine failure) is a bug here.
ERROR_CODES = {
    "bad_frame",
    "wrong_size",
    "bad_message",
    "not_started",
    "already_started",
    "bad_start",
    "unknown_model",
    "at_capacity",
    "idle_timeout",
    "session_resumed",
    # Issue 18's bounds, reachable by the hostile messages below.
    "too_big",
    "too_many_messages",
    # A burst's pongs are queued faster than the writer runs: past 64 unsent, documented.
    "slow_reader",
}
# 1002: the WebSocket layer's answer to a malformed frame on the wire (the raw-bytes case).
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1013}

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
SIDES = st.integers(1, 48) | st.sampled_from([0, -1, 5000, 2**40]) | JSON_VALUES


@st.composite
def start_message(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "start", "width": draw(SIDES), "height": draw(SIDES)}
    optional = {
        "input": st.sampled_from(["jpeg", "png", "rgb24", "bmp", ""]) | JSON_VALUES,
        "output": st.sampled_from(["alpha_png", "alpha_raw", "mp4"]) | JSON_VALUES,
        "downsample_ratio": st.floats(-1, 2) | st.none() | JSON_VALUES,
        "model": st.sampled_from([None, "fp32", "nope", "../../etc/passwd"]) | JSON_VALUES,
        "extra": JSON_VALUES,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(strategy)
    return fields


@dataclass(frozen=True)
class Hostile:
    """A hostile message made when sent (so a failing example prints as a short repr).

    `deep`: `{"type": <kind-ish>, "x": [[[...]]]}` nested `n` deep (balanced or not);
    `huge`: a ping padded to `n` bytes (over MAX_TEXT_BYTES: too_big, over MAX_MESSAGE_BYTES:
    the WebSocket layer's 1009); `ping_id`: a ping whose id is `n` characters, a big integer
    or a nested value; `burst`: `n` pings at once (past 100: too_many_messages);
    `png`/`jpeg`: a small image declaring `n` x `m` pixels."""

    kind: str
    n: int
    m: int = 1
    flag: bool = False

    def messages(self) -> list[str | bytes]:
        if self.kind == "deep":
            inner = "[" * self.n + ("]" * self.n if self.flag else "")
            return ['{"type":"ping","x":' + inner + ("}" if self.flag else "")]
        if self.kind == "huge":
            return [json.dumps({"type": "ping", "pad": "x" * self.n})]
        if self.kind == "ping_id":
            if self.m % 4 == 1:  # a big integer, written as digits: json.dumps refuses past
                # 4300 of them, the server's parser must refuse it cleanly too
                return ['{"type":"ping","id":1' + "0" * self.n + "}"]
            ids: list[Any] = ["i" * self.n, None, [[self.n]], {"id": self.n}]
            return [json.dumps({"type": "ping", "id": ids[self.m % len(ids)]})]
        if self.kind == "burst":
            return [json.dumps({"type": "ping", "id": i}) for i in range(self.n)]
        if self.kind == "png":
            return [png_declaring(self.n, self.m)]
        return [jpeg_declaring(self.n, self.m)]


HOSTILE = st.one_of(
    st.builds(Hostile, st.just("deep"), st.integers(9, 200_000), flag=st.booleans()),
    st.builds(
        Hostile,
        st.just("huge"),
        st.sampled_from([MAX_TEXT_BYTES - 64, MAX_TEXT_BYTES + 1, 2 * MAX_MESSAGE_BYTES])
        | st.integers(0, 2 * MAX_MESSAGE_BYTES),
    ),
    st.builds(Hostile, st.just("ping_id"), st.integers(0, 100_000), st.integers(0, 3)),
    st.builds(Hostile, st.just("burst"), st.integers(1, 300)),
    st.builds(
        Hostile,
        st.sampled_from(["png", "jpeg"]),
        st.integers(1, 65_535) | st.just(60_000),
        st.integers(1, 65_535) | st.just(60_000),
    ),
)

CONTROL = st.fixed_dictionaries(
    {"type": st.sampled_from(["reset", "stop", "ping", "start", "matte", "", "STOP"])},
    optional={"id": JSON_VALUES, "session": JSON_VALUES},
)
TEXT = st.one_of(
    start_message().map(json.dumps),
    CONTROL.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=64),
)


Message = str | bytes | int | Hostile


@st.composite
def conversation(draw: st.DrawFn) -> tuple[str | None, list[Message]]:
    """A `?session=` value (or None) and the messages to send. Binary frames are random bytes,
    random JPEG-ish prefixes, exactly width*height*3 bytes of a sound rgb24 start, or (an int)
    that many zero bytes, up to twice the message limit; `Hostile` ones are made when sent.
    A sound start is rgb24 or PNG (where bomb frames meet the header check)."""
    session = draw(st.none() | st.text(max_size=40))
    messages: list[Message] = []
    declared: int | None = None
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["start", "text", "bytes", "frame", "big", "hostile"]))
        if kind == "start" and draw(st.booleans()):
            width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
            fmt = draw(st.sampled_from(["rgb24", "png"]))
            sound = {"type": "start", "width": width, "height": height, "input": fmt}
            if draw(st.booleans()):
                sound["downsample_ratio"] = draw(st.floats(1e-3, 1.0))
            messages.append(json.dumps(sound))
            declared = width * height * 3 if fmt == "rgb24" else None
        elif kind == "start":
            messages.append(json.dumps(draw(start_message())))
        elif kind == "text":
            messages.append(draw(TEXT))
        elif kind == "bytes":
            prefix = draw(st.sampled_from([b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n"]))
            messages.append(prefix + draw(st.binary(max_size=2048)))
        elif kind == "frame" and declared is not None:
            messages.append(draw(st.binary(min_size=declared, max_size=declared)))
        elif kind == "big":  # a size: the bytes are made when sent (a short repr on failure)
            messages.append(draw(st.integers(1, 2 * MAX_MESSAGE_BYTES)))
        elif kind == "hostile":
            messages.append(draw(HOSTILE))
    return session, messages


@pytest.fixture(scope="module")
def target(start_server: ServerFactory) -> RunningServer:
    """A small message limit (so 1009 is reachable), a short TTL (so that the sessions the
    fuzzer leaves behind detached are soon freed), and no keep-alive pings during the run:
    their payloads come from the `random` module, which Hypothesis takes for a strategy
    using it (a false alarm from another thread)."""
    return start_server(
        max_message_bytes=MAX_MESSAGE_BYTES,
        session_ttl_s=2.0,
        ping_interval_s=3600.0,
        ping_timeout_s=20.0,
        idle_timeout_s=7200.0,
    )


class QuietWitness(Witness):
    """The witness of tests/server without client keep-alive pings (see `target`)."""

    def _run(self) -> None:
        try:
            with connect(self.server.ws, compression=None, ping_interval=None) as ws:
                ws.send(
                    json.dumps({"type": "start", "width": 176, "height": 144, "input": "rgb24"})
                )
                assert json.loads(ws.recv(timeout=60))["type"] == "started"
                while not self._stop.is_set():
                    ws.send(self.frames[self.count % len(self.frames)].tobytes())
                    assert json.loads(ws.recv(timeout=60))["type"] == "matte"
                    assert isinstance(ws.recv(timeout=60), bytes)
                    self.count += 1
        except BaseException as exc:
            self.error = exc


def check_answers(received: list[str | bytes], close: int | None) -> None:
    expect_payload = False
    for message in received:
        if isinstance(message, bytes):
            assert expect_payload, f"a binary message without a matte before it: {message[:40]!r}"
            expect_payload = False
            continue
        assert not expect_payload, "a matte was not followed by its payload"
        obj = json.loads(message)
        assert isinstance(obj, dict), obj
        assert obj.get("type") in SERVER_MESSAGES, obj
        if obj["type"] == "error":
            assert obj["code"] in ERROR_CODES, obj
            assert isinstance(obj["message"], str), obj
            assert obj["message"], obj
        expect_payload = obj["type"] == "matte"
    assert close is None or close in CLOSE_CODES, f"closed with {close}: {received[-3:]}"


def wire(message: Message) -> list[str | bytes]:
    if isinstance(message, Hostile):
        return message.messages()
    return [b"\x00" * message if isinstance(message, int) else message]


def converse(server: RunningServer, session: str | None, messages: list[Message]) -> None:
    url = server.ws if session is None else f"{server.ws}?session={quote(session, safe='')}"
    received: list[str | bytes] = []
    close: int | None = None
    with connect(url, compression=None, max_size=None, open_timeout=30) as ws:
        try:
            for message in messages:
                for data in wire(message):
                    ws.send(data)
            # Messages are handled in order: the pong (or the close) ends the exchange.
            ws.send(json.dumps({"type": "ping", "id": "fuzz-end"}))
        except ConnectionClosed:
            pass  # closed by the server; what it said is read below
        ended: ConnectionClosed | None = None
        try:
            while True:
                answer = ws.recv(timeout=60)
                received.append(answer)
                if answer == END:
                    break
        except ConnectionClosed as closed:
            ended = closed
    # A server that closes while the client is still sending leaves unread bytes behind, so
    # its kernel resets the connection and the client may lose the close frame (1006): that
    # is TCP, not the server. A crash would show in the server's log, which is checked.
    if ended is not None and ended.rcvd is not None:
        close = ended.rcvd.code
    check_answers(received, close)


def wire_garbage(server: RunningServer, data: bytes) -> None:
    """Random bytes after the handshake: the server closes (1002 for a malformed frame), waits
    for the rest of a frame the bytes began, or reads them as a frame; never worse."""
    client = RawClient(server.ws)
    try:
        client.sock.sendall(data)
        client.send_json({"type": "ping", "id": "fuzz-end"})
        while bytes(client.recv(timeout=2).data).decode(errors="replace") != END:
            pass
    except ConnectionResetError:  # the server closed: with a documented code, or none
        assert client.close_code is None or client.close_code in CLOSE_CODES, client.close_code
    except OSError:  # no answer within 2 s (a frame the bytes began), or reset while sending
        pass
    finally:
        client.close()


def run_fuzz(
    server: RunningServer,
    frames: list[NDArray[np.uint8]],
    caplog: pytest.LogCaptureFixture,
    examples: int,
) -> None:
    caplog.set_level(logging.WARNING)
    fuzz_settings = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

    @fuzz_settings
    @given(conversation())
    def talk(case: tuple[str | None, list[Message]]) -> None:
        converse(server, *case)

    @fuzz_settings
    @given(st.binary(min_size=1, max_size=512))
    def garbage(data: bytes) -> None:
        wire_garbage(server, data)

    with QuietWitness(server, frames) as witness:
        talk()
        witness.check()
        garbage()
        witness.check()
    # The server's loggers (the test's own websockets client logs a peer that hangs up).
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.name.split(".")[0] in ("server", "uvicorn", "ptq4vm_core")
    ]
    assert not errors, [r.getMessage() for r in errors][:5]
    assert httpx.get(f"{server.http}/healthz", timeout=30).status_code == 200
    check_connections_given_back(server)


def check_connections_given_back(server: RunningServer) -> None:
    """Every connection the fuzzer opened was given back: the same client address gets its
    whole quota (PTQ4VM_MAX_CONNECTIONS_PER_CLIENT) once the detached sessions expired.
    A counter leaked by any conversation shows here as too_many_connections / at_capacity."""
    quota = server.settings.max_connections_per_client
    deadline = time.monotonic() + server.settings.session_ttl_s + 30
    # Detached sessions (the fuzzer's and the witness's) expire after their TTL.
    while gauge(server.http, ACTIVE) or gauge(server.http, DETACHED):
        assert time.monotonic() < deadline, "sessions were left behind"
        time.sleep(0.1)
    opened = [
        connect(server.ws, compression=None, ping_interval=None).__enter__() for _ in range(quota)
    ]
    try:
        for i, ws in enumerate(opened):
            ws.send(json.dumps({"type": "ping", "id": i}))
            assert json.loads(ws.recv(timeout=30)) == {"type": "pong", "id": i}
    finally:
        for ws in opened:
            ws.close()


def test_websocket_fuzz_quick(
    target: RunningServer, clip_rgb: list[NDArray[np.uint8]], caplog: pytest.LogCaptureFixture
) -> None:
    run_fuzz(target, clip_rgb[:4], caplog, examples=25)


@pytest.mark.slow
def test_websocket_fuzz_thorough(
    target: RunningServer, clip_rgb: list[NDArray[np.uint8]], caplog: pytest.LogCaptureFixture
) -> None:
    run_fuzz(target, clip_rgb[:4], caplog, examples=400)


def test_found_by_the_fuzzer_network_under_one_pixel(target: RunningServer) -> None:
    """A frame the network would run at under 1 px on a side (small frame, small ratio) failed
    every frame in the engine ("internal"); it is now refused at the start, and by /v1/matte."""
    with connect(target.ws, compression=None, ping_interval=None) as ws:
        ws.send(json.dumps({"type": "start", "width": 8, "height": 3, "downsample_ratio": 0.25}))
        error = json.loads(ws.recv(timeout=30))
        assert (error["type"], error["code"]) == ("error", "bad_start")
        assert "at least 0.3333" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
    png = cv2.imencode(".png", np.zeros((3, 8, 3), np.uint8))[1].tobytes()
    with target.client() as http:
        refused = http.post(
            "/v1/matte", files={"image": ("a.png", png)}, data={"downsample_ratio": "0.25"}
        )
        assert refused.status_code == 422, refused.text
        fine = http.post(
            "/v1/matte", files={"image": ("a.png", png)}, data={"downsample_ratio": "0.34"}
        )
        assert fine.status_code == 200, fine.text
