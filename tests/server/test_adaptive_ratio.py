"""`"downsample_ratio": "adaptive"` (issue 29): a session that lowers its ratio while a frame
costs the server more than the client's rate allows, on a real server, and the rule itself."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed

from server.streaming.adaptive import (
    PROBE_FRAMES,
    WARM_FRAMES,
    WINDOW,
    AdaptiveRatio,
    ratio_ladder,
)
from tests.server.client import StreamError
from tests.server.conftest import RunningServer

MEASURED = WARM_FRAMES + PROBE_FRAMES


def test_a_session_that_cannot_keep_up_steps_down_and_starts_afresh(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    """120 fps asked for (8 ms a frame): ratio 1 cannot, so after measuring it the session
    goes down the ladder, zeroing the state; its mattes are then those of a stream at the new
    ratio from that frame."""
    frames = [f.tobytes() for f in clip_rgb[: MEASURED + 4]]
    with server.stream(input="rgb24", output="alpha_raw", downsample_ratio="adaptive",
                       target_fps=120) as stream:  # fmt: skip
        assert stream.started["adaptive"] is True
        assert stream.started["downsample_ratio"] == 1.0  # the server's choice at 176x144
        mattes = [stream.matte(frame) for frame in frames]
    ratios = [meta["downsample_ratio"] for meta, _ in mattes]
    lower = ratios[MEASURED]
    assert lower in (0.75, 0.5, 0.375, 0.25)
    assert ratios == [1.0] * MEASURED + [lower] * 4
    assert [meta["fresh"] for meta, _ in mattes] == [True] + [False] * (MEASURED - 1) + [True] + [
        False
    ] * 3
    with server.stream(input="rgb24", output="alpha_raw", downsample_ratio=lower) as fixed:
        expected = [fixed.matte(frame)[1] for frame in frames[MEASURED:]]
    assert [payload for _, payload in mattes[MEASURED:]] == expected


def test_a_session_that_keeps_up_keeps_its_ratio(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    with server.stream(input="rgb24", output="alpha_raw", downsample_ratio="adaptive",
                       target_fps=0.5) as stream:  # fmt: skip
        mattes = [stream.matte(f.tobytes())[0] for f in clip_rgb[: MEASURED + WINDOW + 1]]
    assert {meta["downsample_ratio"] for meta in mattes} == {1.0}
    assert sum(meta["fresh"] for meta in mattes) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"downsample_ratio": "fast"},
        {"downsample_ratio": "adaptive", "target_fps": 0},
        {"downsample_ratio": "adaptive", "target_fps": 500},
    ],
)
def test_a_bad_adaptive_start_is_refused(server: RunningServer, fields: dict[str, object]) -> None:
    with pytest.raises((StreamError, ConnectionClosed)) as caught, server.stream(**fields) as s:
        s.recv_json()
    error = caught.value
    if isinstance(error, StreamError):
        assert error.message["code"] == "bad_start"
    else:
        assert isinstance(error, ConnectionClosed)
        assert error.rcvd is not None
        assert error.rcvd.code == 1008


def observe(rule: AdaptiveRatio, ms: float, frames: int) -> list[float | None]:
    return [rule.observe(ms) for _ in range(frames)]


def test_the_rule_measures_skips_and_settles() -> None:
    # 15 fps: 66.7 ms a frame, 56.7 with the headroom. 200 ms at 1 predicts 0.75 at 112 ms
    # (over 1.5x the budget: passed over) and 0.5 at 50 (measured).
    rule = AdaptiveRatio([1.0, 0.75, 0.5, 0.375, 0.25], 15)
    assert observe(rule, 200, MEASURED) == [None] * (MEASURED - 1) + [0.5]
    assert rule.measured == {1.0: 200}
    assert observe(rule, 55, MEASURED) == [None] * MEASURED
    assert rule.settled
    assert rule.ratio == 0.5
    # Settled, a window slower than the frame interval measures the next ratio down.
    assert observe(rule, 60, WINDOW) == [None] * WINDOW
    assert observe(rule, 80, WINDOW) == [None] * (WINDOW - 1) + [0.375]
    assert not rule.settled
    # At the bottom it stays, however slow.
    rule = AdaptiveRatio([0.25], 15)
    assert observe(rule, 500, MEASURED + 2 * WINDOW) == [None] * (MEASURED + 2 * WINDOW)


def test_the_ladder_keeps_the_network_at_one_pixel_or_more() -> None:
    assert ratio_ladder(1.0, 176, 144) == [1.0, 0.75, 0.5, 0.375, 0.25]
    assert ratio_ladder(0.8, 640, 360) == [0.8, 0.75, 0.5, 0.375, 0.25]
    assert ratio_ladder(1.0, 3, 3) == [1.0, 0.75, 0.5, 0.375]
