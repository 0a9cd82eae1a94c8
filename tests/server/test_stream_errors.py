"""Bad input on `/v1/stream`: each case gets its documented error or close code while a
witness session on the same server keeps streaming (DESIGN 4.3.6)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.server.client import Stream
from tests.server.conftest import RunningServer, ServerFactory


class Witness:
    """A session streaming in lockstep in a thread; `check()` asserts it is still going."""

    def __init__(self, server: RunningServer, frames: list[NDArray[np.uint8]]) -> None:
        self.server = server
        self.frames = frames
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.server.stream(input="rgb24") as stream:
                while not self._stop.is_set():
                    stream.matte(self.frames[self.count % len(self.frames)].tobytes())
                    self.count += 1
                stream.stop()
        except BaseException as exc:
            self.error = exc

    def check(self, timeout: float = 30) -> None:
        start = self.count
        deadline = time.monotonic() + timeout
        while self.count < start + 2:
            assert self.error is None, f"the witness session failed: {self.error!r}"
            assert time.monotonic() < deadline, "the witness session stopped progressing"
            time.sleep(0.01)

    def __enter__(self) -> Witness:
        self._thread.start()
        self.check()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if exc_info[0] is None:
            assert self.error is None, f"the witness session failed: {self.error!r}"


@pytest.fixture
def witness(server: RunningServer, clip_rgb: list[NDArray[np.uint8]]) -> Any:
    with Witness(server, clip_rgb[:8]) as w:
        yield w
        w.check()


def raw(server: RunningServer) -> ClientConnection:
    return connect(server.ws, compression=None, open_timeout=30).__enter__()


def expect_error_then_close(ws: ClientConnection, code: str, close: int) -> dict[str, Any]:
    message = json.loads(ws.recv(timeout=30))
    assert message["type"] == "error", message
    assert message["code"] == code, message
    assert message["message"]
    expect_close(ws, close)
    obj: dict[str, Any] = message
    return obj


def expect_close(ws: ClientConnection, close: int) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        drain(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == close


def drain(ws: ClientConnection) -> None:
    while True:
        ws.recv(timeout=30)


START = {"type": "start", "width": 176, "height": 144, "input": "rgb24"}


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '"start"', json.dumps({"type": "dance"}), json.dumps({"no": "type"})],
)
def test_malformed_text_is_unsupported_data(
    server: RunningServer, witness: Witness, text: str
) -> None:
    with raw(server) as ws:
        ws.send(text)
        expect_error_then_close(ws, "bad_message", 1003)


def test_frame_before_start_is_a_policy_violation(server: RunningServer, witness: Witness) -> None:
    with raw(server) as ws:
        ws.send(b"\x00" * 100)
        expect_error_then_close(ws, "not_started", 1008)


@pytest.mark.parametrize(
    "start",
    [
        {"type": "start", "height": 144},
        {**START, "width": -1},
        {**START, "input": "bmp"},
        {**START, "output": "mp4"},
        {**START, "downsample_ratio": 2},
        {**START, "width": 100_000},
    ],
)
def test_bad_start_is_a_policy_violation(
    server: RunningServer, witness: Witness, start: dict[str, Any]
) -> None:
    with raw(server) as ws:
        ws.send(json.dumps(start))
        expect_error_then_close(ws, "bad_start", 1008)


def test_second_start_and_early_reset(server: RunningServer, witness: Witness) -> None:
    with raw(server) as ws:
        ws.send(json.dumps({"type": "reset"}))
        expect_error_then_close(ws, "not_started", 1008)
    with raw(server) as ws:
        ws.send(json.dumps(START))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        ws.send(json.dumps(START))
        expect_error_then_close(ws, "already_started", 1008)


def test_unknown_model(server: RunningServer, witness: Witness) -> None:
    with raw(server) as ws:
        ws.send(json.dumps({**START, "model": "int3-nonexistent"}))
        message = expect_error_then_close(ws, "unknown_model", 1008)
        assert "int3-nonexistent" in message["message"]


def test_bad_frames_keep_the_session_open(
    server: RunningServer, witness: Witness, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    with server.stream(input="rgb24") as stream:
        stream.conn.send(b"\x01" * 1000)  # wrong size for 176x144 rgb24
        error = stream.recv_json()
        assert (error["type"], error["code"], error["seq"]) == ("error", "wrong_size", 0)
        assert "76032" in error["message"]  # says what was expected
        meta, _ = stream.matte(clip_rgb[0].tobytes())
        assert (meta["seq"], meta["fresh"]) == (1, True)
    with server.stream(input="jpeg") as stream:
        stream.conn.send(b"garbage, not a jpeg" * 10)
        error = stream.recv_json()
        assert (error["code"], error["seq"]) == ("bad_frame", 0)
        small = np.zeros((10, 10, 3), np.uint8)
        stream.conn.send(cv2.imencode(".jpg", small)[1].tobytes())
        error = stream.recv_json()
        assert (error["code"], error["seq"]) == ("wrong_size", 1)
        assert "10x10" in error["message"]
        good = cv2.imencode(".jpg", clip_rgb[0][..., ::-1])[1].tobytes()
        meta, payload = stream.matte(good)
        assert meta["seq"] == 2
        assert payload.startswith(b"\x89PNG")


def test_oversized_message_is_closed_with_1009(
    start_server: ServerFactory, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    server = start_server(max_message_bytes=100_000)
    with Witness(server, clip_rgb[:4]) as w, server.stream(input="rgb24") as stream:
        stream.conn.send(b"\x00" * 200_000)
        expect_close(stream.conn, 1009)
        w.check()


def test_too_many_sessions_is_closed_with_1013(
    start_server: ServerFactory, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    server = start_server(max_sessions=2)
    with Witness(server, clip_rgb[:4]) as w:
        with server.stream(input="rgb24") as second:
            # Refused as it connects (an open connection counts against capacity, started
            # or not); its start message may no longer get through.
            with raw(server) as ws:
                with contextlib.suppress(ConnectionClosed):
                    ws.send(json.dumps(START))
                expect_error_then_close(ws, "at_capacity", 1013)
            w.check()
            second.stop()
        # A slot is free again.
        with Stream(server.ws, input="rgb24") as third:
            assert third.started["type"] == "started"
            third.stop()
        w.check()
