"""`/v1/stream` on a real server: lockstep parity with `ptq4vm matte`, reset, resume,
latest-frame-wins, concurrency (DESIGN 4.3, issue 6 acceptance)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server.client import decode_png
from tests.server.conftest import REFERENCE_FRAMES, RunningServer, ServerFactory


def png(frame: NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", frame[..., ::-1])
    assert ok
    return data.tobytes()


def test_lockstep_matches_ptq4vm_matte(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], fp32_reference: list[Any]
) -> None:
    with server.stream(input="rgb24", output="alpha_png", model="fp32") as stream:
        assert stream.started["model"] == "fp32"
        assert stream.started["downsample_ratio"] == 1.0  # RVM's guidance for 176x144
        session = stream.started["session"]
        for seq, frame in enumerate(clip_rgb):
            meta, payload = stream.matte(frame.tobytes())
            assert meta["seq"] == seq
            assert meta["dropped"] == []
            assert meta["model"] == "fp32"
            assert meta["fresh"] is (seq == 0)
            np.testing.assert_array_equal(decode_png(payload), fp32_reference[seq], f"frame {seq}")
        stopped = stream.stop()
    assert stopped == {
        "type": "stopped",
        "session": session,
        "frames": REFERENCE_FRAMES,
        "matted": REFERENCE_FRAMES,
        "dropped": 0,
    }


def test_png_in_raw_out(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], fp32_reference: list[Any]
) -> None:
    with server.stream(input="png", output="alpha_raw") as stream:
        for seq in range(3):
            meta, payload = stream.matte(png(clip_rgb[seq]))
            assert meta["format"] == "raw"
            assert len(payload) == 176 * 144
            alpha = np.frombuffer(payload, np.uint8).reshape(144, 176)
            np.testing.assert_array_equal(alpha, fp32_reference[seq])


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no reset (the control)"])
def test_reset_gives_a_fresh_stream(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[Any],
    reset: bool,
) -> None:
    """After other frames, a reset makes the next mattes those of a new stream; without one
    (the control) the state carries and they differ."""
    with server.stream(input="rgb24") as stream:
        for frame in clip_rgb[10:16]:
            stream.matte(frame.tobytes())
        if reset:
            stream.send_json({"type": "reset"})
        mattes = [stream.matte(clip_rgb[i].tobytes()) for i in range(3)]
    assert [meta["fresh"] for meta, _ in mattes] == [reset, False, False]
    alphas = [decode_png(payload) for _, payload in mattes]
    if reset:
        for alpha, expected in zip(alphas, fp32_reference, strict=False):
            np.testing.assert_array_equal(alpha, expected)
    else:
        assert not np.array_equal(alphas[0], fp32_reference[0])


@pytest.mark.parametrize("send_start", [True, False])
def test_resume_keeps_the_state(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[Any],
    send_start: bool,
) -> None:
    with server.stream(input="rgb24") as stream:
        for frame in clip_rgb[:10]:
            stream.matte(frame.tobytes())
        session = stream.started["session"]
    # The socket closed without `stop`: the session waits for a resume.
    with server.stream(input="rgb24", session=session, start=send_start) as again:
        if send_start:
            assert again.started["session"] == session
            assert again.started["resumed"] is True
            assert again.started["next_seq"] == 10
        for seq in range(10, 14):
            meta, payload = again.matte(clip_rgb[seq].tobytes())
            assert meta["seq"] == seq
            np.testing.assert_array_equal(decode_png(payload), fp32_reference[seq])
        again.stop()


def test_resume_of_an_unknown_session_starts_a_new_one(server: RunningServer) -> None:
    with server.stream(session="no-such-session") as stream:
        assert stream.started["resumed"] is False
        assert stream.started["session"] != "no-such-session"


def test_resume_takes_over_a_live_connection(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    with server.stream(input="rgb24") as first:
        first.matte(clip_rgb[0].tobytes())
        with server.stream(input="rgb24", session=first.started["session"]) as second:
            assert second.started["resumed"] is True
            error = first.recv_json()
            assert error["code"] == "session_resumed"
            with pytest.raises(ConnectionClosed) as closed:
                first.recv_json()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
            meta, _ = second.matte(clip_rgb[1].tobytes())
            assert meta["seq"] == 1


def test_latest_frame_wins(server: RunningServer, clip_rgb: list[NDArray[np.uint8]]) -> None:
    """A burst of frames: older waiting frames are dropped and reported, the last is matted,
    nothing is queued without bound."""
    burst = 20
    with server.stream(input="rgb24") as stream:
        for frame in clip_rgb[:burst]:
            stream.conn.send(frame.tobytes())
        seen: list[int] = []
        dropped: list[int] = []
        while burst - 1 not in seen:
            meta, _ = stream.recv_matte()
            seen.append(meta["seq"])
            dropped.extend(meta["dropped"])
        stopped = stream.stop()
    assert seen == sorted(seen)
    assert sorted(seen + dropped) == list(range(burst))
    assert dropped, "20 frames sent at once cannot all be matted at 176x144 in real time"
    assert stopped["dropped"] == len(dropped)


def test_four_sessions_all_progress(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]], fp32_reference: list[Any]
) -> None:
    frames = 8

    def run(index: int) -> list[int]:
        with server.stream(input="rgb24") as stream:
            seqs = []
            for seq in range(frames):
                meta, payload = stream.matte(clip_rgb[seq].tobytes())
                seqs.append(meta["seq"])
                # Lockstep per session: each still gets exactly the single-stream mattes.
                np.testing.assert_array_equal(decode_png(payload), fp32_reference[seq])
            stream.stop()
            return seqs

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    assert results == [list(range(frames))] * 4


def test_ping_pong_and_no_compression(server: RunningServer) -> None:
    with connect(server.ws, compression="deflate", open_timeout=30) as ws:
        # The client offered permessage-deflate; the server must not accept it.
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(json.dumps({"type": "ping", "id": 7}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "pong", "id": 7}


def test_idle_session_is_closed_and_resumable(
    start_server: ServerFactory, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    server = start_server(idle_timeout_s=1.5, ping_interval_s=0.5, ping_timeout_s=1.0)
    with server.stream(input="rgb24") as stream:
        stream.matte(clip_rgb[0].tobytes())
        started = time.monotonic()
        error = stream.recv_json(timeout=10)
        assert error["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            stream.recv_json(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert 1.0 < time.monotonic() - started < 8
    with server.stream(input="rgb24", session=stream.started["session"]) as again:
        assert again.started["resumed"] is True
        assert again.started["next_seq"] == 1
