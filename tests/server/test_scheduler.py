"""The scheduler and state batching, without a network: fairness, lanes, micro-batching."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from ptq4vm_core.engine import load_engine
from ptq4vm_core.engine.base import EngineOutput, Float32Array, Mattes
from ptq4vm_core.engine.frames import alpha_to_uint8, frames_to_batch
from ptq4vm_core.model import RecurrentState
from server.inference.batching import split_state, stack_states, state_signature
from server.inference.scheduler import Done, Lane, Scheduler, Work


class Count(NamedTuple):
    n: NDArray[np.float32]  # [B,1]: frames this stream has seen


class FakeEngine:
    """Counts frames per stream in its state; records every call's tags and batch size."""

    name = "fake"

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def infer(
        self, src: Float32Array, state: Count | None, ratio: float, *, alpha_only: bool = False
    ) -> EngineOutput[Count]:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(src.shape[0])
        n = np.zeros((src.shape[0], 1), np.float32) if state is None else state.n
        # The count as the alpha's byte: the scheduler serves the alpha as bytes.
        pha = src[:, :1] * 0 + ((n + 1) / np.float32(255))[:, :, None, None]
        return EngineOutput(src, pha, Count(n + 1))


def work(engine: Any, tag: Any, state: Any = None, lane: Lane = Lane.REALTIME) -> Work:
    return Work(
        engine=engine,
        model="m",
        size=(4, 4),
        ratio=1.0,
        state=state,
        decode=lambda: np.zeros((4, 4, 3), np.uint8),
        finish=lambda fgr, alpha: (tag, float(alpha.max())),
        lane=lane,
        tag=tag,
    )


def test_streams_are_served_round_robin() -> None:
    """Three streams, each resubmitting at once: one worker serves them in turn."""
    engine = FakeEngine()
    order: list[str] = []

    async def stream(name: str, frames: int, scheduler: Scheduler) -> None:
        state = None
        for _ in range(frames):
            done = await scheduler.run(work(engine, name, state))
            order.append(done.payload[0])
            state = done.state

    async def main() -> None:
        scheduler = Scheduler(workers=1)
        await asyncio.gather(*(stream(n, 4, scheduler) for n in "abc"))
        await scheduler.aclose()

    asyncio.run(main())
    assert order[:3] == ["a", "b", "c"]
    for i in range(0, 12, 3):  # every round serves each stream once
        assert sorted(order[i : i + 3]) == ["a", "b", "c"]


def test_batch_lane_gets_its_share() -> None:
    engine = FakeEngine(delay=0.005)
    order: list[Lane] = []

    async def main() -> None:
        scheduler = Scheduler(workers=1, batch_share=3)

        async def stream(lane: Lane, tag: str) -> None:
            for _ in range(8):
                await scheduler.run(work(engine, tag, lane=lane))
                order.append(lane)

        await asyncio.gather(stream(Lane.BATCH, "job"), *(stream(Lane.REALTIME, s) for s in "xyz"))
        await scheduler.aclose()

    asyncio.run(main())
    first = order[:16]
    assert 3 <= first.count(Lane.BATCH) <= 5  # about 1 in 4 while both lanes wait
    assert order.count(Lane.BATCH) == 8  # and the job is never starved


def test_micro_batching_groups_same_size_frames_and_splits_state() -> None:
    engine = FakeEngine(delay=0.05)

    async def main() -> list[Done]:
        scheduler = Scheduler(workers=1, max_batch=4)
        warm = await scheduler.run(work(engine, "w"))  # a state of one frame, for one stream
        jobs = [work(engine, i, state=warm.state if i == 0 else None) for i in range(4)]
        results = await asyncio.gather(*(scheduler.run(j) for j in jobs))
        await scheduler.aclose()
        return results

    results = asyncio.run(main())
    # The warm-up, then stream 0 alone (the worker was free when it came), then the three
    # fresh streams that queued behind it as one batch.
    assert engine.calls == [1, 1, 3]
    assert [r.payload[1] for r in results] == [2.0, 1.0, 1.0, 1.0]
    assert all(isinstance(r.state, Count) for r in results)  # the engine's own state class
    assert [float(r.state[0][0, 0]) for r in results] == [2.0, 1.0, 1.0, 1.0]
    assert all(r.state[0].shape == (1, 1) for r in results)


class FakeFrameEngine(FakeEngine):
    """Takes frames itself (`FrameEngine`): records what each call was given; the scheduler
    asks for mattes (`infer_mattes`)."""

    def __init__(self) -> None:
        super().__init__(delay=0.05)
        self.given: list[tuple[np.dtype[Any], tuple[int, ...]]] = []

    def infer_frames(
        self, frames: NDArray[np.uint8], state: Count | None, ratio: float, *, alpha_only: bool
    ) -> EngineOutput[Count]:
        raise AssertionError("the scheduler asks for mattes")

    def infer_mattes(
        self, frames: NDArray[np.uint8], state: Count | None, ratio: float, *, alpha_only: bool
    ) -> Mattes[Count]:
        self.given.append((frames.dtype, frames.shape))
        out = self.infer(frames_to_batch(list(frames)), state, ratio, alpha_only=alpha_only)
        return Mattes(out.fgr, np.stack([alpha_to_uint8(p) for p in out.pha]), out.state)


def test_engines_that_take_frames_are_given_the_decoded_frames() -> None:
    """The decoded uint8 frames go to an engine that converts them itself (OpenVINO, in its
    graph), one frame or a batch of them stacked; no float copy is made before the call."""
    engine = FakeFrameEngine()

    async def main() -> list[Done]:
        scheduler = Scheduler(workers=1, max_batch=4)
        first = asyncio.ensure_future(scheduler.run(work(engine, "first")))
        results = await asyncio.gather(*(scheduler.run(work(engine, i)) for i in range(3)))
        await first
        await scheduler.aclose()
        return results

    results = asyncio.run(main())
    assert engine.given == [(np.dtype(np.uint8), (1, 4, 4, 3)), (np.dtype(np.uint8), (3, 4, 4, 3))]
    assert [r.payload[1] for r in results] == [1.0, 1.0, 1.0]


class Timeline:
    """When each engine call and each encode ran (monotonic intervals)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []
        self.encodes: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def record(self, into: list[tuple[float, float]], seconds: float) -> None:
        began = time.monotonic()
        time.sleep(seconds)
        with self.lock:
            into.append((began, time.monotonic()))

    def overlaps(self) -> int:
        return sum(1 for a, b in self.calls for c, d in self.encodes if a < d and c < b)


class TimedEngine(FakeEngine):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__(delay=0.0)
        self.timeline = timeline

    def infer(
        self, src: Float32Array, state: Count | None, ratio: float, *, alpha_only: bool = False
    ) -> EngineOutput[Count]:
        self.timeline.record(self.timeline.calls, 0.02)
        return super().infer(src, state, ratio, alpha_only=alpha_only)


def encodes_beside_engine_calls(engine_owns_cores: bool) -> tuple[int, int]:
    """Two streams resubmitting at once, each matte's encode 30 ms (longer than an engine
    call): (engine calls that overlapped an encode, frames done)."""
    timeline = Timeline()
    engine = TimedEngine(timeline)

    def slow_work(tag: str, state: Any) -> Work:
        job = work(engine, tag, state)
        job.finish = lambda fgr, alpha: timeline.record(timeline.encodes, 0.03)
        return job

    async def stream(name: str, scheduler: Scheduler) -> None:
        state = None
        for _ in range(6):
            state = (await scheduler.run(slow_work(name, state))).state

    async def main() -> None:
        scheduler = Scheduler(workers=1, engine_owns_cores=engine_owns_cores)
        await asyncio.gather(stream("a", scheduler), stream("b", scheduler))
        await scheduler.aclose()

    asyncio.run(main())
    return timeline.overlaps(), len(timeline.calls)


def test_engine_calls_wait_for_encodes_where_the_engine_owns_the_cores() -> None:
    overlapped, calls = encodes_beside_engine_calls(engine_owns_cores=True)
    assert calls == 12
    assert overlapped == 0
    # Without it, the next stream's engine call runs while the last matte is encoded.
    overlapped, calls = encodes_beside_engine_calls(engine_owns_cores=False)
    assert calls == 12
    assert overlapped > 0


def test_a_failed_encode_does_not_hold_the_engine() -> None:
    """An encode that raises still ends its count: the next engine call goes ahead."""
    engine = FakeEngine(delay=0.001)

    def broken(fgr: Any, alpha: Any) -> Any:
        raise OSError("PNG encoding failed")

    async def main() -> tuple[Any, Done]:
        scheduler = Scheduler(workers=1, engine_owns_cores=True)
        failing = work(engine, "bad")
        failing.finish = broken
        failed = await asyncio.gather(scheduler.run(failing), return_exceptions=True)
        done = await asyncio.wait_for(scheduler.run(work(engine, "next")), 5)
        await scheduler.aclose()
        return failed[0], done

    failed, done = asyncio.run(main())
    assert isinstance(failed, OSError)
    assert done.payload == ("next", 1.0)


def test_a_bad_frame_fails_alone() -> None:
    engine = FakeEngine(delay=0.05)

    def bad() -> NDArray[np.uint8]:
        raise ValueError("garbage")

    async def main() -> list[Any]:
        scheduler = Scheduler(workers=1, max_batch=4)
        blocker = asyncio.ensure_future(scheduler.run(work(engine, "first")))
        broken = work(engine, "bad")
        broken.decode = bad
        jobs = [broken, work(engine, "good")]
        results = await asyncio.gather(*(scheduler.run(j) for j in jobs), return_exceptions=True)
        await blocker
        await scheduler.aclose()
        return results

    bad_result, good_result = asyncio.run(main())
    assert isinstance(bad_result, ValueError)
    assert isinstance(good_result, Done)
    assert good_result.payload == ("good", 1.0)


def test_batched_inference_matches_single_streams(clip_frames: list[NDArray[np.uint8]]) -> None:
    """The real FP32 engine: three streams batched give each stream its own mattes."""
    engine = load_engine("fp32")
    streams = [clip_frames[i * 20 : i * 20 + 3] for i in range(3)]
    single = []
    for frames in streams:
        state = None
        alphas = []
        for frame in frames:
            out = engine.infer(frames_to_batch([frame]), state, 1.0)
            state = out.state
            alphas.append(alpha_to_uint8(out.pha[0]))
        single.append(alphas)
    states: list[Any] = [None] * 3
    for step in range(3):
        batch = frames_to_batch([frames[step] for frames in streams])
        out = engine.infer(batch, stack_states(states), 1.0)
        states = split_state(out.state, 3)
        for i in range(3):
            got = alpha_to_uint8(out.pha[i])
            assert np.abs(got.astype(int) - single[i][step]).max() <= 1, (i, step)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_stack_and_split_round_trip(kind: str) -> None:
    def make(value: float) -> Any:
        if kind == "torch":
            return RecurrentState(*(torch.full((1, c, 2, 2), value) for c in (1, 2, 3, 4)))
        return Count(np.full((1, 3), value, np.float32))

    states = [make(1.0), make(2.0), make(3.0)]
    stacked = stack_states(states)
    assert stacked is not None
    assert type(stacked) is type(states[0])
    assert stacked[0].shape[0] == 3
    for original, back in zip(states, split_state(stacked, 3), strict=True):
        for a, b in zip(original, back, strict=True):
            assert bool((a == b).all())
    assert state_signature(states[0]) == state_signature(states[1]) != state_signature(None)
    assert stack_states([None, None]) is None


def test_states_that_cannot_share_a_batch_are_refused() -> None:
    numpy_state = Count(np.ones((1, 3), np.float32))
    torch_state = Count(torch.ones((1, 3)))  # type: ignore[arg-type]
    assert state_signature(numpy_state) != state_signature(torch_state)
    with pytest.raises(TypeError, match="new stream"):
        stack_states([numpy_state, None])
    with pytest.raises(TypeError, match="torch tensors with one of numpy arrays"):
        stack_states([numpy_state, torch_state])
