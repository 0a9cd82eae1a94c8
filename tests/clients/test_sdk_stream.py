"""The SDK's streams against a real server: same mattes as `ptq4vm matte`, resumption, window."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from numpy.typing import NDArray
from ptq4vm_client import AsyncStream, FrameError, MattesLostError, Stream, StreamClosedError

from tests.server.conftest import RunningServer

FRAMES = 20
W, H = 176, 144


def test_lockstep_stream_matches_cli(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
) -> None:
    with Stream(server.ws, width=W, height=H, input="rgb24", model="fp32") as stream:
        assert stream.started.model == "fp32"
        mattes = [stream.matte(frame) for frame in clip_rgb[:FRAMES]]
        stopped = stream.stop()
    assert [m.seq for m in mattes] == list(range(FRAMES))
    assert all(not m.dropped for m in mattes)
    assert mattes[0].fresh
    for i, matte in enumerate(mattes):
        assert matte.alpha.shape == (H, W)
        np.testing.assert_array_equal(matte.alpha, fp32_reference[i], err_msg=f"frame {i}")
    assert (stopped.frames, stopped.matted, stopped.dropped) == (FRAMES, FRAMES, 0)


def test_async_png_frames_raw_mattes_and_reset(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
) -> None:
    async def run() -> None:
        async with AsyncStream(
            server.ws, width=W, height=H, input="png", output="alpha_raw"
        ) as stream:
            for i in range(3):  # PNG is lossless: the same mattes as the CLI
                matte = await stream.matte(clip_rgb[i])
                np.testing.assert_array_equal(matte.alpha, fp32_reference[i])
            await stream.reset()
            fresh = await stream.matte(clip_rgb[3])
            assert fresh.fresh
            assert fresh.seq == 3
            with pytest.raises(FrameError) as bad:
                await stream.matte(b"not an image")
            assert (bad.value.code, bad.value.seq) == ("bad_frame", 4)
            assert (await stream.matte(clip_rgb[0])).seq == 5

    asyncio.run(run())


def test_resume_after_forced_disconnect_keeps_state(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
) -> None:
    cut = 8

    async def run() -> None:
        async with AsyncStream(server.ws, width=W, height=H, input="rgb24") as stream:
            session = stream.session
            for frame in clip_rgb[:cut]:
                await stream.matte(frame)
            # A network failure, not a close: the socket is torn down with no close frame.
            stream._ws.transport.abort()  # type: ignore[union-attr]
            async with asyncio.timeout(30):
                while stream.stats.resumes == 0:
                    await asyncio.sleep(0.02)
            assert stream.started.resumed
            assert stream.session == session
            for i in range(cut, cut + 4):
                matte = await stream.matte(clip_rgb[i])
                assert matte.seq == i
                assert not matte.fresh
                np.testing.assert_array_equal(matte.alpha, fp32_reference[i], err_msg=f"frame {i}")
            assert stream.stats.lost == 0

    asyncio.run(run())


def test_send_right_after_a_drop_keeps_the_state_exact(
    server: RunningServer,
    clip_rgb: list[NDArray[np.uint8]],
    fp32_reference: list[NDArray[np.uint8]],
) -> None:
    """A frame sent just as the connection dies is either sent again on the new connection,
    or reported as never processed (then the caller sends it again): the state stays exact."""

    async def run() -> None:
        async with AsyncStream(server.ws, width=W, height=H, input="rgb24") as stream:
            for frame in clip_rgb[:3]:
                await stream.matte(frame)
            stream._ws.transport.abort()  # type: ignore[union-attr]
            unprocessed: tuple[int, ...] = ()
            try:
                matte = await stream.matte(clip_rgb[3])
            except MattesLostError as lost:
                unprocessed = lost.unprocessed
                matte = await stream.matte(clip_rgb[3])
            assert unprocessed in ((), (3,))
            np.testing.assert_array_equal(matte.alpha, fp32_reference[3])
            assert stream.stats.resumes == 1

    asyncio.run(run())


def test_window_bounds_frames_in_flight(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    window, count = 2, 16

    async def run() -> None:
        async with AsyncStream(server.ws, width=W, height=H, input="rgb24", window=window) as s:
            peak = 0

            async def produce() -> None:
                nonlocal peak
                for frame in clip_rgb[:count]:
                    await s.send(frame)
                    peak = max(peak, s.in_flight)
                    assert s.in_flight <= window
                await s.stop()

            producer = asyncio.create_task(produce())
            seen: list[int] = []
            async for matte in s:
                seen.extend(matte.dropped)
                seen.append(matte.seq)
            await producer
        assert peak == window
        assert sorted(seen) == list(range(count))  # every frame matted or reported dropped

    asyncio.run(run())


def test_start_errors_are_typed(server: RunningServer) -> None:
    with pytest.raises(StreamClosedError) as exc:
        Stream(server.ws, width=W, height=H, model="no-such-model").open()
    assert (exc.value.code, exc.value.close_code) == ("unknown_model", 1008)
    with pytest.raises(ValueError, match="window"):
        Stream(server.ws, width=W, height=H, window=0)
    with (
        Stream(server.ws, width=W, height=H, input="rgb24") as stream,
        pytest.raises(ValueError, match=r"\[144,176,3\] uint8"),
    ):
        stream.send(np.zeros((10, 10, 3), np.uint8))
