"""Inference scheduling: frames from every session run in a thread pool, fairly, in batches.

The event loop only queues work and hands it to `workers` threads; decoding and the engine
call run in those threads, never on the loop, and each result's `finish` (encoding) runs in a
codec thread of its own, handed over by the worker as its engine call returns: the worker
decodes the next frame while the last one is encoded.
Where the engines' threads take every core (`engine_owns_cores`, the default set-up), an engine
call then waits until no encode runs: an encode beside the call takes a core from one of the
engine's threads, and its other threads wait for that one at every operator (spinning, then
yielding), so the encode cost the call more than its own time. Beside the next frame's decode
it costs that much and no more (measured in docs/server.md, "Serving efficiency").

Each stream (a WebSocket session, a video job, a `/v1/matte` request) has at most one frame in
the scheduler at a time, because frame N+1 needs the state frame N returns; serving the ready
queue first-in first-out is then round-robin across streams. Two lanes: `realtime` (sessions,
single images) and `batch` (video jobs); when both wait, one batch frame runs for every
`batch_share` realtime ones.

Micro-batching: when a worker takes a frame it also takes up to `max_batch - 1` other ready
frames of the same lane with the same engine, size, ratio and state structure, and runs them
as one engine call. Whether that pays depends on the engine and the CPU: it is off unless
`max_batch` > 1 (see docs/server.md for the measurement).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Generic

import numpy as np

from ptq4vm_core.engine import Engine
from ptq4vm_core.engine.base import Float32Array, S, Uint8Array
from ptq4vm_core.engine.frames import infer_mattes
from server.inference.batching import split_state, stack_states, state_signature
from server.metrics import Metrics

logger = logging.getLogger(__name__)


class Lane(StrEnum):
    REALTIME = "realtime"
    BATCH = "batch"


Decode = Callable[[], Uint8Array]
"""Runs in a worker: the frame as [H,W,3] uint8 RGB (the engine takes it as it is,
`frames.infer_mattes`); raises to refuse the frame."""
Finish = Callable[[Float32Array | None, Uint8Array], Any]
"""Runs in a codec thread: (fgr [3,H,W] float32 in [0,1], or None when the work asked for alpha
only; the alpha [H,W] uint8, the matte's bytes) -> what the caller gets."""


@dataclass(eq=False)
class Work(Generic[S]):
    """One frame of one stream. `state` is the stream's state before this frame (of `engine`'s
    state type); `tag` is the caller's (e.g. the frame's seq). A caller may replace `decode`,
    `tag` and `state` while `dispatched` is False (latest-frame-wins); both happen on the event
    loop."""

    engine: Engine[S]
    model: str
    size: tuple[int, int]  # (H, W)
    ratio: float
    state: S | None
    decode: Decode
    finish: Finish
    lane: Lane = Lane.REALTIME
    alpha_only: bool = False  # the caller needs no foreground: the engine may skip it
    tag: Any = None
    dispatched: bool = False
    enqueued_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future[Done[S]] | None = None

    def batch_key(self) -> Hashable:
        key = (id(self.engine), self.size, self.ratio, self.alpha_only)
        return (*key, state_signature(self.state))


@dataclass(frozen=True)
class Done(Generic[S]):
    """A processed frame: the finish() result, the new state, and where the time went."""

    payload: Any
    state: S
    queue_s: float
    decode_s: float
    infer_s: float
    encode_s: float
    batch: int


Finishing = Callable[[], "Done[S] | BaseException"]
"""A frame past its engine call: its `finish` (the encode) and bookkeeping, for a codec thread."""
Encoding = concurrent.futures.Future["Done[S] | BaseException"]
"""A `Finishing` handed to a codec thread."""


def _resolve(work: Work[Any], result: Any) -> None:
    """`result` (a Done, or an exception) to the work's waiter, unless it is gone."""
    if work.future is None or work.future.done():
        return
    if isinstance(result, BaseException):
        work.future.set_exception(result)
    else:
        work.future.set_result(result)


def _settle(work: Work[Any], encoding: asyncio.Future[Any]) -> None:
    """The codec thread's result (a Done, or the exception finish returned) to the waiter."""
    try:
        result = encoding.result()
    except BaseException as exc:  # the codec pool was shut down under it
        result = exc
    _resolve(work, result)


class Scheduler(Generic[S]):
    """Runs the works of every stream whose engines have state type `S` (the engines'
    `EngineState` in the server)."""

    def __init__(
        self,
        *,
        workers: int = 1,
        max_batch: int = 1,
        batch_share: int = 4,
        metrics: Metrics | None = None,
        engine_owns_cores: bool = False,
    ) -> None:
        """`engine_owns_cores`: the engines' threads take every core; an engine call then
        starts when no encode is running (see the module's docstring)."""
        self.workers = workers
        self.max_batch = max_batch
        self.engine_owns_cores = engine_owns_cores
        self._share = batch_share
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ptq4vm-infer")
        self._codec = ThreadPoolExecutor(workers, thread_name_prefix="ptq4vm-codec")
        self._ready: dict[Lane, deque[Work[S]]] = {lane: deque() for lane in Lane}
        self._free = workers
        self._realtime_run = 0
        self._closed = False
        # Encodes handed to the codec threads and not yet ended; the workers wait on it.
        self._encoding = 0
        self._encoded = threading.Condition()

    async def run(self, work: Work[S]) -> Done[S]:
        """Queue `work` and wait for it; raises what its decode/finish or the engine raised.
        Cancelling the wait before dispatch takes the work out of the queue."""
        if self._closed:
            raise RuntimeError("the scheduler is shut down")
        loop = asyncio.get_running_loop()
        work.future = loop.create_future()
        work.enqueued_at = time.monotonic()
        self._ready[work.lane].append(work)
        self._dispatch()
        return await work.future

    def pending(self) -> int:
        return sum(len(q) for q in self._ready.values())

    async def aclose(self) -> None:
        """Fail queued work and wait (off the loop) for running engine calls to end."""
        self._closed = True
        for queue in self._ready.values():
            while queue:
                work = queue.popleft()
                if work.future is not None and not work.future.done():
                    work.future.set_exception(RuntimeError("the server is shutting down"))
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self._codec.shutdown, wait=True, cancel_futures=True)

    # On the event loop -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._free > 0 and not self._closed:
            batch = self._take()
            if not batch:
                return
            self._free -= 1
            for work in batch:
                work.dispatched = True
            running = loop.run_in_executor(self._pool, self._execute, batch)
            running.add_done_callback(lambda f, b=batch: self._finished(b, f))  # type: ignore[misc]

    def _next_lane(self) -> Lane | None:
        realtime, batch = self._ready[Lane.REALTIME], self._ready[Lane.BATCH]
        if realtime and (not batch or self._realtime_run < self._share):
            self._realtime_run += 1
            return Lane.REALTIME
        if batch:
            self._realtime_run = 0
            return Lane.BATCH
        return None

    def _take(self) -> list[Work[S]]:
        while (lane := self._next_lane()) is not None:
            queue = self._ready[lane]
            first = queue.popleft()
            if first.future is None or first.future.done():  # its waiter was cancelled
                continue
            batch = [first]
            if self.max_batch > 1:
                key = first.batch_key()
                for other in list(queue):
                    if len(batch) == self.max_batch:
                        break
                    live = other.future is not None and not other.future.done()
                    if live and other.batch_key() == key:
                        queue.remove(other)
                        batch.append(other)
            return batch
        return []

    def _finished(
        self, batch: list[Work[S]], running: asyncio.Future[list[Encoding[S] | BaseException]]
    ) -> None:
        self._free += 1
        try:
            results: list[Encoding[S] | BaseException] = running.result()
        except BaseException as exc:  # the pool was shut down under it
            results = [exc] * len(batch)
        loop = asyncio.get_running_loop()
        for work, result in zip(batch, results, strict=True):
            if self._closed and not isinstance(result, BaseException):
                result = RuntimeError("the server is shutting down")
            if isinstance(result, BaseException):
                _resolve(work, result)
            else:
                encoding = asyncio.wrap_future(result, loop=loop)
                encoding.add_done_callback(lambda f, w=work: _settle(w, f))  # type: ignore[misc]
        if not self._closed:
            self._dispatch()

    # In a worker thread ------------------------------------------------------------------------

    def _encode(self, finishing: Finishing[S]) -> Encoding[S] | BaseException:
        """`finishing` to a codec thread, from the worker as soon as the engine call returns
        (not a hop through the event loop later), counted until it ends."""
        with self._encoded:
            self._encoding += 1
        try:
            return self._codec.submit(self._encoded_after, finishing)
        except RuntimeError as exc:  # the codec pool is shut down: it never runs
            self._encode_ended()
            return exc

    def _encoded_after(self, finishing: Finishing[S]) -> Done[S] | BaseException:
        try:
            return finishing()
        finally:
            self._encode_ended()

    def _encode_ended(self) -> None:
        """In the codec thread (or the worker, when the codec pool refused it)."""
        with self._encoded:
            self._encoding -= 1
            self._encoded.notify_all()

    def _wait_for_encodes(self) -> None:
        """Where the engine owns the cores: until no encode runs beside the engine call."""
        if self.engine_owns_cores:
            with self._encoded:
                self._encoded.wait_for(lambda: self._encoding == 0)

    def _execute(self, batch: list[Work[S]]) -> list[Encoding[S] | BaseException]:
        started = time.monotonic()
        results: list[Encoding[S] | BaseException | None] = [None] * len(batch)
        inputs: list[Uint8Array] = []
        good: list[int] = []
        decode_s: dict[int, float] = {}
        for i, work in enumerate(batch):
            t = time.monotonic()
            try:
                inputs.append(work.decode())
                good.append(i)
            except Exception as exc:
                results[i] = exc
            decode_s[i] = time.monotonic() - t
        if good:
            first = batch[good[0]]
            self._wait_for_encodes()
            try:
                t = time.monotonic()
                frames = inputs[0][None] if len(inputs) == 1 else np.stack(inputs)
                state = stack_states([batch[i].state for i in good])
                out = infer_mattes(
                    first.engine, frames, state, first.ratio, alpha_only=first.alpha_only
                )
                infer_s = time.monotonic() - t
                states = split_state(out.state, len(good))
            except Exception as exc:
                logger.exception("engine %s failed on a batch of %d", first.engine.name, len(good))
                for i in good:
                    results[i] = exc
            else:
                self._observe_infer(first, infer_s, len(good))
                for j, i in enumerate(good):
                    results[i] = self._encode(
                        partial(
                            self._finish,
                            batch[i],
                            None if out.fgr is None else out.fgr[j],
                            out.alpha[j],
                            states[j],
                            started,
                            decode_s[i],
                            infer_s,
                            len(good),
                        )
                    )
        return [r if r is not None else RuntimeError("frame not processed") for r in results]

    def _finish(
        self,
        work: Work[S],
        fgr: Float32Array | None,
        alpha: Uint8Array,
        state: S,
        started: float,
        decode_s: float,
        infer_s: float,
        batch: int,
    ) -> Done[S] | BaseException:
        t = time.monotonic()
        try:
            payload = work.finish(fgr, alpha)
        except Exception as exc:
            return exc
        encode_s = time.monotonic() - t
        queue_s = max(0.0, started - work.enqueued_at)
        if self._metrics is not None:
            self._metrics.queue_seconds.labels(lane=work.lane.value).observe(queue_s)
            self._metrics.decode_seconds.observe(decode_s)
            self._metrics.encode_seconds.observe(encode_s)
            self._metrics.frames_matted.labels(model=work.model, lane=work.lane.value).inc()
        return Done(payload, state, queue_s, decode_s, infer_s, encode_s, batch)

    def _observe_infer(self, work: Work[S], seconds: float, batch: int) -> None:
        if self._metrics is not None:
            self._metrics.inference_seconds.labels(model=work.model).observe(seconds)
            self._metrics.batch_size.observe(batch)
