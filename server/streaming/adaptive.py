"""A stream's adaptive downsample ratio (`"downsample_ratio": "adaptive"` in `start`): the
server's form of the browser tab's plan (clients/web/plan.js), for one session on a shared
server.

RVM's ratio trades the backbone's resolution for speed (the refiner keeps edges at full
resolution). The session starts at the ratio the server would pick for the frame size and
measures what a frame costs it here (decode + inference + encode, the work this session puts
on the server; time queued behind other sessions not counted): WARM_FRAMES untimed frames at a
ratio (the first runs at a shape compile), then the median of PROBE_FRAMES. Within HEADROOM of
the client's frame interval (`target_fps`, default DEFAULT_FPS) it stays; otherwise it steps
down the ladder to the first ratio whose cost, predicted from the one measured (the backbone
scales with the ratio squared; the refiner's full-resolution share only adds to it), is within
SKIP_MARGIN of the budget, or to the lowest. Settled, a median over WINDOW frames above the
frame interval (the server got slower: more sessions, a noisy neighbour) measures the next
ratio down. It never steps up: a ratio change zeroes the recurrent state (its sizes follow the
network's resolution), so it changes rarely, and only for speed.
"""

from __future__ import annotations

import statistics

from server.streaming.codec import network_size_error

RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25)
DEFAULT_FPS = 15.0
WARM_FRAMES = 2
PROBE_FRAMES = 3
WINDOW = 10
HEADROOM = 0.85
SKIP_MARGIN = 1.5


def ratio_ladder(start: float, width: int, height: int) -> list[float]:
    """`start`, then every RATIOS entry below it that still gives the network 1 px a side."""
    lower = [r for r in RATIOS if r < start and network_size_error(width, height, r) is None]
    return [start, *lower]


class AdaptiveRatio:
    """The ratio of one stream; `observe` each frame's cost, it says when to change."""

    def __init__(self, ladder: list[float], target_fps: float | None) -> None:
        self.ladder = ladder
        self.target_fps = target_fps or DEFAULT_FPS
        self.level = 0
        self.settled = False
        self.measured: dict[float, float] = {}  # ratio -> median ms per frame
        self._frames: list[float] = []

    @property
    def ratio(self) -> float:
        return self.ladder[self.level]

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.target_fps

    def observe(self, ms: float) -> float | None:
        """A frame at `ratio` cost `ms`: the ratio to run from now on when it changes, else
        None."""
        self._frames.append(ms)
        if not self.settled:
            if len(self._frames) < WARM_FRAMES + PROBE_FRAMES:
                return None
            median = statistics.median(self._frames[WARM_FRAMES:])
            self.measured[self.ratio] = median
            self._frames = []
            if median <= HEADROOM * self.interval_ms or self.level == len(self.ladder) - 1:
                self.settled = True
                return None
            return self._step_down(median)
        if len(self._frames) < WINDOW:
            return None
        median = statistics.median(self._frames)
        self._frames = []
        if median <= self.interval_ms or self.level == len(self.ladder) - 1:
            return None
        return self._step_down(median)

    def _step_down(self, ms: float) -> float:
        budget = SKIP_MARGIN * HEADROOM * self.interval_ms
        ratio = self.ratio
        last = len(self.ladder) - 1
        self.level = next(
            (
                level
                for level in range(self.level + 1, last)
                if ms * (self.ladder[level] / ratio) ** 2 <= budget
            ),
            last,
        )
        self.settled = False
        self._frames = []
        return self.ratio
