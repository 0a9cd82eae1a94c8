"""`Stream`: the blocking API, an `AsyncStream` driven by an event loop in a private thread.

Frames are encoded in the caller's thread (JPEG/PNG encoding is the costly part), so the
loop thread only moves bytes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

import numpy as np

from ptq4vm_client.aio_stream import AsyncStream
from ptq4vm_client.codec import InputFormat, OutputFormat
from ptq4vm_client.errors import StreamEndedError
from ptq4vm_client.messages import Matte, Started, Stopped, StreamStats

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="ptq4vm-client-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Stream:
    """A streaming session, blocking. Use as `with Stream(url, width=W, height=H) as s:`.

    Same arguments and semantics as :class:`AsyncStream`: `send()` returns the frame's seq
    (blocking while `window` frames are in flight), `recv()` the next matte, `matte()` both
    (lockstep), iteration the mattes until the stream is stopped.
    """

    def __init__(
        self,
        url: str,
        *,
        width: int,
        height: int,
        input: InputFormat = "jpeg",
        output: OutputFormat = "alpha_png",
        downsample_ratio: float | Literal["adaptive"] | None = None,
        model: str | None = None,
        target_fps: float | None = None,
        window: int = 1,
        auto_resume: bool = True,
        resume_attempts: int = 5,
        resume_delay_s: float = 0.25,
        jpeg_quality: int = 90,
        open_timeout_s: float = 30.0,
        session: str | None = None,
    ) -> None:
        self._loop = _LoopThread()

        async def build() -> AsyncStream:  # its queue and locks belong to the loop thread
            return AsyncStream(
                url,
                width=width,
                height=height,
                input=input,
                output=output,
                downsample_ratio=downsample_ratio,
                target_fps=target_fps,
                model=model,
                window=window,
                auto_resume=auto_resume,
                resume_attempts=resume_attempts,
                resume_delay_s=resume_delay_s,
                jpeg_quality=jpeg_quality,
                open_timeout_s=open_timeout_s,
                session=session,
            )

        try:
            self._stream = self._loop.run(build())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def aio(self) -> AsyncStream:
        """The underlying AsyncStream (its loop runs in another thread)."""
        return self._stream

    def open(self) -> Started:
        """Connects and starts the session; on failure the stream is closed."""
        try:
            return self._loop.run(self._stream.open())
        except BaseException:
            self._loop.stop()
            raise

    def __enter__(self) -> Stream:
        self.open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._loop.run(self._stream.__aexit__(*exc_info))
        finally:
            self._loop.stop()

    @property
    def started(self) -> Started:
        return self._stream.started

    @property
    def session(self) -> str:
        return self._stream.session

    @property
    def in_flight(self) -> int:
        return self._stream.in_flight

    @property
    def stats(self) -> StreamStats:
        return self._stream.stats

    def send(self, frame: np.ndarray[Any, Any] | bytes) -> int:
        return self._loop.run(self._stream.send(self._stream.encode(frame)))

    def recv(self, timeout: float | None = None) -> Matte:
        return self._loop.run(self._stream.recv(timeout))

    def matte(self, frame: np.ndarray[Any, Any] | bytes, timeout: float | None = 60) -> Matte:
        return self._loop.run(self._stream.matte(self._stream.encode(frame), timeout))

    def reset(self) -> None:
        self._loop.run(self._stream.reset())

    def stop(self, timeout: float | None = 60.0) -> Stopped:
        return self._loop.run(self._stream.stop(timeout))

    def close(self) -> None:
        """Closes without stopping (the session stays resumable) and ends the loop thread."""
        try:
            if not self._loop.loop.is_closed():
                self._loop.run(self._stream.close())
        finally:
            self._loop.stop()

    def __iter__(self) -> Iterator[Matte]:
        while True:
            try:
                yield self.recv()
            except StreamEndedError:
                return
