"""WebRTC over WHIP (DESIGN 4.6, issue 28): a real aiortc publisher (the SDK's) and a real
server on loopback, host ICE candidates only."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from numpy.typing import NDArray
from ptq4vm_client.whip import WhipError, WhipPublisher, pin_vp8_bitrate
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed

from ptq4vm_core.cli.main import app as cli
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8, frames_to_batch
from ptq4vm_core.io.video import probe
from tests.server.client import Stream, StreamError
from tests.server.conftest import Assets, RunningServer, ServerFactory, cli_mattes, png_dir

SDP = {"Content-Type": "application/sdp"}
FRAMES = 30
FPS = 6.0  # slow enough that the CPU mattes every frame: the alpha is compared frame by frame


def whip(server: RunningServer) -> str:
    return f"{server.http}/v1/whip"


async def offer(videos: int = 1, direction: str = "sendrecv", audio: bool = False) -> str:
    """An aiortc offer with `videos` video transceivers (and the data channel)."""
    pc = RTCPeerConnection()
    for _ in range(videos):
        pc.addTransceiver("video", direction=direction)
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("ptq4vm")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def post(server: RunningServer, sdp: str, **headers: str) -> httpx.Response:
    return httpx.post(whip(server), content=sdp, headers={**SDP, **headers}, timeout=30)


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """MAD x1e3 of two 8-bit mattes."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255 * 1e3)


@pytest.fixture(scope="module")
def whip_server(start_server: ServerFactory) -> RunningServer:
    return start_server(whip_connect_timeout_s=2.0)


@pytest.fixture
def high_bitrate() -> Iterator[None]:
    """VP8 both ways at 4 Mbit/s (aiortc's encoders are per process: client and server)."""
    from aiortc.codecs import vpx

    saved = vpx.MIN_BITRATE, vpx.DEFAULT_BITRATE, vpx.MAX_BITRATE
    pin_vp8_bitrate(4_000_000)
    yield
    vpx.MIN_BITRATE, vpx.DEFAULT_BITRATE, vpx.MAX_BITRATE = saved


def test_whip_alpha_follows_ptq4vm_matte_with_its_state(
    whip_server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    tmp_path: Path,
    high_bitrate: None,
    record_property: Any,
) -> None:
    """The SDK publishes the sample clip; the alpha track it gets back matches `ptq4vm matte`
    on the same frames within VP8's loss, and only with the recurrent state carried: a matte
    made with the state reset every frame is measurably further from it."""
    publisher = WhipPublisher(whip(whip_server), output="alpha", model=FP32)
    result = asyncio.run(publisher.run(clip_rgb[:FRAMES], fps=FPS))
    assert result.sent == FRAMES
    assert result.matted >= FRAMES // 2, result.stats
    assert all(s["model"] == FP32 for s in result.stats)
    matted = sorted(round(s["t"] * FPS) for s in result.stats)
    first = matted[0]  # the first frame of the server's session: its state starts there
    frames = clip_rgb[first:FRAMES]
    recurrent = cli_mattes(png_dir(frames, tmp_path / "clip"), FP32, tmp_path)
    engine = load_engine(FP32, root=whip_server.settings.home)
    reset = [
        alpha_to_uint8(engine.infer(frames_to_batch([f]), None, 1.0, alpha_only=True).pha)
        for f in frames
    ]
    compared = [i for i in matted if result.frames[i] is not None]
    assert len(compared) >= FRAMES // 2
    got = [result.frames[i] for i in compared]
    with_state = np.mean([mad(g, recurrent[i - first]) for g, i in zip(got, compared, strict=True)])
    without = np.mean([mad(g, reset[i - first]) for g, i in zip(got, compared, strict=True)])
    record_property("whip_alpha_mad_vs_ptq4vm_matte", with_state)
    record_property("whip_alpha_mad_vs_state_reset", without)
    print(f"WHIP alpha MAD x1e3 vs ptq4vm matte {with_state:.2f}, vs reset {without:.2f}")
    assert with_state < 8.0, with_state  # VP8 both ways at 4 Mbit/s
    assert with_state < 0.8 * without, (with_state, without)
    assert result.latencies_s


def test_composite_and_side_by_side_come_back_in_colour(
    whip_server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    blue = WhipPublisher(whip(whip_server), output="composite", background="blue")
    result = asyncio.run(blue.run(clip_rgb[:12], fps=10))
    frame = next(f for f in reversed(result.frames) if f is not None)
    assert frame.shape == (144, 176, 3)
    corner = frame[:10, :10].reshape(-1, 3).mean(axis=0)  # background in the sample clip
    assert corner[2] > 150, corner
    assert max(corner[0], corner[1]) < 80, corner
    both = WhipPublisher(whip(whip_server), output="side_by_side")
    result = asyncio.run(both.run(clip_rgb[:12], fps=10))
    frame = next(f for f in reversed(result.frames) if f is not None)
    assert frame.shape == (144, 352, 3)


def test_bad_offers_get_clear_http_errors(whip_server: RunningServer) -> None:
    huge = "v=0\r\n" + "a=x\r\n" * 20_000
    assert post(whip_server, huge).status_code == 413
    assert httpx.post(whip(whip_server), content="v=0", timeout=10).status_code == 415
    assert post(whip_server, "hello").status_code == 400
    assert post(whip_server, "v=0\r\nm=video nonsense\r\n").status_code == 400
    for sdp in (
        asyncio.run(offer(videos=0, audio=True)),
        asyncio.run(offer(videos=2)),
        asyncio.run(offer(direction="recvonly")),
    ):
        answer = post(whip_server, sdp)
        assert answer.status_code == 422, answer.text
    answer = post(whip_server, asyncio.run(offer()), Origin="http://evil.example")
    assert answer.status_code == 403
    assert httpx.delete(f"{whip(whip_server)}/nope", timeout=10).status_code == 404
    assert httpx.patch(f"{whip(whip_server)}/nope", timeout=10).status_code == 405
    with whip_server.client() as http:  # nothing is held by the refused offers
        assert whip_server.services.sessions.waiting == 0
        assert http.get("/healthz").status_code == 200


def test_a_peer_that_never_connects_is_freed(start_server: ServerFactory) -> None:
    """An answered offer whose peer never completes ICE holds its slot only until
    PTQ4VM_WHIP_CONNECT_TIMEOUT_S."""
    server = start_server(max_sessions=1, whip_connect_timeout_s=1.0)
    first = post(server, asyncio.run(offer()))
    assert first.status_code == 201, first.text
    assert first.headers["location"].startswith("/v1/whip/")
    assert first.headers["content-type"].startswith("application/sdp")
    assert post(server, asyncio.run(offer())).status_code == 503  # at capacity meanwhile
    deadline = time.monotonic() + 10
    while server.services.whip and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(server.services.whip) == 0
    second = post(server, asyncio.run(offer()))
    assert second.status_code == 201
    assert httpx.delete(server.http + second.headers["location"], timeout=10).status_code == 200
    assert httpx.delete(server.http + second.headers["location"], timeout=10).status_code == 404


def test_capacity_is_shared_with_websocket_sessions(start_server: ServerFactory) -> None:
    server = start_server(max_sessions=1, whip_connect_timeout_s=30.0)
    with Stream(server.ws, input="rgb24") as stream:
        assert stream.started["type"] == "started"
        refused = post(server, asyncio.run(offer()))
        assert refused.status_code == 503
        assert "capacity" in refused.text
        stream.stop()
    held = post(server, asyncio.run(offer()))
    assert held.status_code == 201
    # Refused as it connects: the error message, or the close frame first.
    with pytest.raises((StreamError, ConnectionClosed)) as closed, Stream(server.ws):
        pass
    assert "at capacity" in str(closed.value)
    httpx.delete(server.http + held.headers["location"], timeout=10)
    with Stream(server.ws, input="rgb24") as stream:  # free again
        assert stream.started["type"] == "started"
        stream.stop()


@pytest.mark.parametrize(
    ("settings", "count", "fps", "code", "says"),
    [
        ({"max_frame_side": 128}, 20, 10, "frame_too_big", "PTQ4VM_MAX_FRAME_SIDE"),
        ({"whip_max_fps": 5.0}, 240, 100, "too_fast", "PTQ4VM_WHIP_MAX_FPS"),
    ],
    ids=["frames over the size limit", "far faster than real time"],
)
def test_a_publisher_out_of_bounds_is_ended(
    start_server: ServerFactory,
    clip_rgb: list[NDArray[np.uint8]],
    settings: dict[str, Any],
    count: int,
    fps: int,
    code: str,
    says: str,
) -> None:
    """Frames over the size limit, or far faster than real time: the session ends with the
    code, and the server serves others meanwhile."""
    server = start_server(**settings)
    publisher = WhipPublisher(whip(server))
    with pytest.raises(WhipError) as ended:
        asyncio.run(publisher.run((clip_rgb * 2)[:count], fps=fps))
    assert ended.value.code == code
    assert says in str(ended.value)
    assert len(server.services.whip) == 0
    small = np.ascontiguousarray(clip_rgb[0][:96, :96])  # within either limit
    with Stream(server.ws, input="rgb24", width=96, height=96) as stream:
        message, _ = stream.matte(small.tobytes())
        assert message["type"] == "matte"
        stream.stop()


def test_the_whip_token(start_server: ServerFactory) -> None:
    server = start_server(whip_token="s3cret")
    sdp = asyncio.run(offer())
    assert post(server, sdp).status_code == 401
    assert post(server, sdp, Authorization="Bearer wrong").status_code == 403
    answer = post(server, sdp, Authorization="Bearer s3cret")
    assert answer.status_code == 201
    location = server.http + answer.headers["location"]
    assert httpx.delete(location, timeout=10).status_code == 401
    ok = httpx.delete(location, headers={"Authorization": "Bearer s3cret"}, timeout=10)
    assert ok.status_code == 200


def test_ptq4vm_stream_whip_writes_one_alpha_frame_per_input_frame(
    whip_server: RunningServer, assets: Assets, tmp_path: Path
) -> None:
    out = tmp_path / "alpha.mp4"
    result = CliRunner().invoke(
        cli, ["stream", str(assets.clip), "--whip", whip(whip_server), "--alpha-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "120 frames sent" in result.output
    assert probe(out).frame_count == 120


def test_ptq4vm_stream_whip_from_a_camera_for_some_seconds(
    whip_server: RunningServer, assets: Assets, tmp_path: Path
) -> None:
    """`--camera --seconds 2`: live frames (here the sample clip through OpenCV's capture, as
    a camera is read; no camera on the test machines) for 2 s, then the session ends and the
    alpha has one frame per frame sent."""
    out = tmp_path / "alpha.mp4"
    args = ["stream", str(assets.clip), "--camera", "--seconds", "2", "--whip", whip(whip_server)]
    result = CliRunner().invoke(cli, [*args, "--alpha-out", str(out)])
    assert result.exit_code == 0, result.output
    sent = int(re.search(r"(\d+) frames sent", result.output).group(1))  # type: ignore[union-attr]
    assert 20 <= sent < 120, result.output  # about 2 s at the clip's 30 fps, not the whole clip
    assert probe(out).frame_count == sent


def test_mattes_keep_coming_while_frames_are_dropped(
    whip_server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """Frames faster than they are matted: the server drops some (latest-frame-wins), and the
    returned track goes on to the end (frames replaced while a matte ran come back after it,
    in timestamp order: the encoder takes no other)."""
    big = [np.asarray(cv2.resize(f, (512, 288)), np.uint8) for f in clip_rgb]
    frames = (big * 3)[:75]
    result = asyncio.run(WhipPublisher(whip(whip_server), output="alpha").run(frames, fps=25))
    assert result.dropped > 0
    last = max(s["t"] for s in result.stats)
    assert last >= 0.8 * len(frames) / 25, (last, len(result.stats))
    first = round(min(s["t"] for s in result.stats) * 25)
    back = sum(f is not None for f in result.frames[first:])
    assert back >= 0.8 * (len(frames) - first), back


def test_frames_go_back_in_timestamp_order() -> None:
    """A matte whose message lists frames newer than it (replaced while it ran) sends them
    after it: VP8 takes increasing timestamps only, and one out of order stops the track."""
    from fractions import Fraction
    from types import SimpleNamespace

    from server.streaming.protocol import MatteMessage
    from server.webrtc.peer import WhipPeer
    from server.webrtc.render import Background

    async def run() -> list[int | None]:
        services: Any = SimpleNamespace(settings=SimpleNamespace(), metrics=None)
        lease: Any = SimpleNamespace(release=lambda: None)
        peer = WhipPeer(
            services, lease, client="x", ratio=None, output="alpha", background=Background(),
            configuration=None, on_end=lambda _: None,  # type: ignore[arg-type]
        )  # fmt: skip
        peer.phase = peer.phase.STREAMING
        for seq in range(6):
            peer._stamps[seq] = (1000 + 10 * seq, Fraction(1, 90000))
        alpha = bytes(4)

        def matte(seq: int, dropped: list[int]) -> MatteMessage:
            return MatteMessage(
                seq=seq, model="m", dropped=dropped, fresh=False, width=2, height=2,
                format="raw", downsample_ratio=1.0, batch=1, queue_ms=0, decode_ms=0,
                infer_ms=0, encode_ms=0,
                server_ms=1,
            )  # fmt: skip

        peer.deliver(matte(0, []), alpha)
        peer.deliver(matte(2, [1, 3, 4]), alpha)  # 3 and 4 were replaced while 2 ran
        peer.deliver(matte(5, []), alpha)
        sent = []
        while peer._track.backlog():
            sent.append((await peer._track.recv()).pts)
        return sent

    assert asyncio.run(run()) == [1000, 1010, 1020, 1030, 1040, 1050]


def test_whip_follows_the_per_address_and_detached_session_rules(
    start_server: ServerFactory,
) -> None:
    """A detached WebSocket session gives its slot to a WHIP publisher (never keeps a live
    client out), and an address's WHIP sessions count against its share."""
    server = start_server(max_sessions=1, max_connections_per_client=1, whip_connect_timeout_s=30)
    stream = Stream(server.ws, input="rgb24").__enter__()
    assert stream.started["type"] == "started"
    stream.vanish()  # detached, resumable, holding the only slot
    deadline = time.monotonic() + 10
    while server.services.sessions.attached() and time.monotonic() < deadline:
        time.sleep(0.05)
    held = post(server, asyncio.run(offer()))
    assert held.status_code == 201, held.text  # the detached session was evicted for it
    again = post(server, asyncio.run(offer()))
    assert again.status_code == 429  # this address's one connection is the WHIP session
    assert "PTQ4VM_MAX_CONNECTIONS_PER_CLIENT" in again.text
    httpx.delete(server.http + held.headers["location"], timeout=10)


def test_a_background_image_by_id(
    whip_server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    red = np.zeros((60, 80, 3), np.uint8)
    red[..., 2] = 255  # BGR
    ok, png = cv2.imencode(".png", red)
    assert ok
    stored = httpx.post(
        f"{whip_server.http}/v1/backgrounds",
        files={"image": ("bg.png", png.tobytes(), "image/png")},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    image_id = stored.json()["id"]
    assert "/" not in image_id
    bad = httpx.post(
        f"{whip_server.http}/v1/backgrounds", files={"image": ("x.png", b"nope")}, timeout=30
    )
    assert bad.status_code == 415
    assert post(whip_server, "v=0\r\n").status_code in (400, 422)
    unknown = httpx.post(
        f"{whip(whip_server)}?background=no-such-id", content=asyncio.run(offer()),
        headers=SDP, timeout=30,
    )  # fmt: skip
    assert unknown.status_code == 422
    publisher = WhipPublisher(whip(whip_server), background=image_id)
    result = asyncio.run(publisher.run(clip_rgb[:12], fps=10))
    frame = next(f for f in reversed(result.frames) if f is not None)
    corner = frame[:10, :10].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 150, corner
    assert max(corner[1], corner[2]) < 80, corner
