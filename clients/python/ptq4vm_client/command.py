"""`ptq4vm stream`: send a video, a frame directory or a camera to a running server over
`/v1/stream` (or over WebRTC with `--whip`).

Prints achieved fps, latency percentiles and drops at the end; with `--alpha-out` writes one
alpha frame per input frame (a frame the server dropped gets the previous matte, as a real-time
consumer would show).

This package registers the command with `ptq4vm` (entry point group `ptq4vm.commands` in
clients/python/pyproject.toml), so the core's CLI never imports the client. It is the one module
of the client that uses the core (frame reading and writing, the CLI's console): it is loaded only
by `ptq4vm`, and the library itself stands alone.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import takewhile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer
from numpy.typing import NDArray

from ptq4vm_client.aio_stream import AsyncStream
from ptq4vm_client.errors import FrameError, MattesLostError, Ptq4vmError, StreamEndedError
from ptq4vm_core.cli.common import console, progress_bar, user_errors
from ptq4vm_core.io.camera import open_camera
from ptq4vm_core.io.video import FrameWriter, iter_frames, open_writer, probe

FrameFormat = Literal["png", "jpeg", "rgb24"]


@dataclass
class _Source:
    """What is streamed: its frames, size and rate; `total` None for a camera."""

    frames: Iterator[NDArray[np.uint8]]
    width: int
    height: int
    fps: Fraction
    total: int | None


@contextmanager
def _open_source(input: Path, camera: bool, seconds: float | None) -> Iterator[_Source]:
    """INPUT as a file or frame directory, or (`camera`) as a device read live until
    `seconds` or Ctrl-C: the first Ctrl-C ends the capture, and what was matted is kept."""
    if not camera:
        info = probe(input)
        fps = info.fps or Fraction(15)
        yield _Source(iter_frames(input), info.width, info.height, fps, info.frame_count)
        return
    stop = threading.Event()
    with open_camera(str(input)) as device:
        limit = f" for {seconds:g} s" if seconds is not None else ""
        console.print(
            f"capturing {input} ({device.width}x{device.height}, {float(device.fps):g} fps)"
            f"{limit}; Ctrl-C ends it",
            highlight=False,
        )
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            frames = takewhile(lambda _: not stop.is_set(), device.frames(seconds))
            yield _Source(frames, device.width, device.height, device.fps, None)
        finally:
            signal.signal(signal.SIGINT, previous)


@dataclass
class _Outcome:
    frames: int = 0
    latencies_s: list[float] = field(default_factory=list)
    dropped: int = 0
    lost: int = 0
    errors: int = 0
    model: str = ""
    session: str = ""
    seconds: float = 0.0


def stream_command(
    input: Annotated[
        Path,
        typer.Argument(
            help="Video file or directory of PNG/JPG frames; with --camera, a camera: 0 (the "
            "first) or a device path (/dev/video0)."
        ),
    ],
    url: Annotated[
        str | None, typer.Option(help="The server's stream, ws://HOST:PORT/v1/stream.")
    ] = None,
    alpha_out: Annotated[Path | None, typer.Option(help="Alpha: video file or PNG dir.")] = None,
    downsample: Annotated[
        float | None,
        typer.Option(help="Network resolution as a fraction of the input (default: ~512 px)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Version to use (default: active).")] = None,
    window: Annotated[
        int, typer.Option(min=1, help="Frames in flight; 1 = lockstep, nothing dropped.")
    ] = 1,
    frame_format: Annotated[
        str, typer.Option(help="How frames travel: png (lossless), jpeg or rgb24.")
    ] = "png",
    whip: Annotated[
        str | None,
        typer.Option(
            help="Publish over WebRTC instead, to http://HOST:PORT/v1/whip (a VP8 track at the "
            "input's frame rate; the alpha track comes back). Needs the webrtc extra."
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(help="With --whip: PTQ4VM_WHIP_TOKEN.")] = None,
    camera: Annotated[
        bool, typer.Option(help="INPUT is a camera, read live until --seconds or Ctrl-C.")
    ] = False,
    seconds: Annotated[
        float | None, typer.Option(min=0, help="With --camera: stop after this many seconds.")
    ] = None,
) -> None:
    """Stream INPUT to a server and report fps, latency p50/p99 and drops."""
    if (url is None) == (whip is None):
        raise typer.BadParameter("give --url (WebSocket) or --whip (WebRTC), one of them")
    if seconds is not None and not camera:
        raise typer.BadParameter("--seconds is for --camera (a file streams to its end)")
    with user_errors(), _open_source(input, camera, seconds) as source:
        if whip is not None:
            _whip(source, whip, alpha_out, downsample, model, token)
            return
        assert url is not None
        if frame_format not in ("png", "jpeg", "rgb24"):
            raise ValueError(f"--frame-format must be png, jpeg or rgb24, got {frame_format!r}")
        stream = AsyncStream(
            url,
            width=source.width,
            height=source.height,
            input=frame_format,  # type: ignore[arg-type]  # checked above
            output="alpha_png",
            downsample_ratio=downsample,
            model=model,
            window=window,
        )
        with ExitStack() as stack, progress_bar(transient=True) as progress:
            writer = None
            if alpha_out is not None:
                writer = stack.enter_context(_alpha_writer(alpha_out, source))
            task = progress.add_task("stream", total=source.total)
            try:
                outcome = asyncio.run(
                    _stream(stream, source.frames, writer, lambda: progress.advance(task))
                )
            except Ptq4vmError as exc:
                console.print(f"[bold red]error:[/] {exc}", highlight=False)
                raise typer.Exit(1) from None
    typer.echo(_summary(outcome))


def _alpha_writer(path: Path, source: _Source) -> FrameWriter:
    return open_writer(path, "alpha", width=source.width, height=source.height, fps=source.fps)


async def _stream(
    stream: AsyncStream,
    frames: Iterator[NDArray[np.uint8]],
    writer: FrameWriter | None,
    advance: Callable[[], None],
) -> _Outcome:
    """Sends every frame (read and encoded in worker threads) while the mattes are read and
    written."""
    outcome = _Outcome()
    started = time.monotonic()
    async with stream:
        outcome.model, outcome.session = stream.started.model, stream.started.session

        async def produce() -> int:
            sent = 0
            while (frame := await asyncio.to_thread(next, frames, None)) is not None:
                await stream.send(await asyncio.to_thread(stream.encode, frame))
                sent += 1
            await stream.stop()
            return sent

        producer = asyncio.create_task(produce())
        previous = np.zeros((stream.height, stream.width), np.uint8)
        written = 0
        while True:
            try:
                matte = await stream.recv()
            except MattesLostError as exc:
                outcome.lost += len(exc.seqs)
                continue
            except FrameError as exc:
                console.print(f"[yellow]warning:[/] {exc}", highlight=False)
                continue
            except StreamEndedError:
                break
            outcome.latencies_s.append(matte.latency_s)
            outcome.dropped += len(matte.dropped)
            if writer is not None:
                # Frames without a matte (dropped, lost) repeat the last one shown.
                for _ in range(written, matte.seq):
                    writer.write(previous)
                writer.write(matte.alpha)
            for _ in range(matte.seq + 1 - written):
                advance()
            previous, written = matte.alpha, matte.seq + 1
        outcome.frames = await producer
        if writer is not None:
            for _ in range(written, outcome.frames):
                writer.write(previous)
        outcome.errors = stream.stats.frame_errors
    outcome.seconds = time.monotonic() - started
    return outcome


def _summary(outcome: _Outcome) -> str:
    matted = len(outcome.latencies_s)
    ms = np.percentile(np.asarray(outcome.latencies_s) * 1e3, [50, 99]) if matted else [0.0, 0.0]
    fps = matted / outcome.seconds if outcome.seconds > 0 else 0.0
    return (
        f"{outcome.frames} frames sent, {matted} matted by {outcome.model} "
        f"(session {outcome.session}) in {outcome.seconds:.2f} s: {fps:.1f} fps, "
        f"latency p50 {ms[0]:.1f} ms p99 {ms[1]:.1f} ms, dropped {outcome.dropped}, "
        f"lost {outcome.lost}, errors {outcome.errors}"
    )


def _whip(
    source: _Source,
    url: str,
    alpha_out: Path | None,
    downsample: float | None,
    model: str | None,
    token: str | None,
) -> None:
    """`--whip`: the frames at the input's rate over WebRTC; the returned alpha written, a
    frame that came back with none repeating the previous one."""
    from ptq4vm_client.whip import WhipError, WhipPublisher

    publisher = WhipPublisher(
        url, token=token, model=model, downsample_ratio=downsample, output="alpha"
    )
    try:
        result = asyncio.run(publisher.run(source.frames, fps=float(source.fps)))
    except WhipError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if alpha_out is not None:
        with _alpha_writer(alpha_out, source) as writer:
            previous = np.zeros((source.height, source.width), np.uint8)
            for frame in result.frames:
                previous = frame if frame is not None else previous
                writer.write(previous)
    outcome = _Outcome(
        frames=result.sent, latencies_s=result.latencies_s, dropped=result.dropped,
        model=result.stats[0]["model"] if result.stats else "", session=result.location,
        seconds=result.seconds,
    )  # fmt: skip
    typer.echo(_summary(outcome))
