"""One video's unit of work: every frame in order through one engine, into one atomic output.

The frames written are exactly those of `ptq4vm matte` with the same model, downsample
ratio and background (the same pipeline, conversions and writer), so a batch output equals
a single run's frame for frame.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from ptq4vm_core.batch.spec import BatchSpec, VideoTask
from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.mattes import MatteWriter
from ptq4vm_core.io.video import iter_frames, parse_background, probe
from ptq4vm_core.pipeline import matte_frames, resolve_downsample_ratio

logger = logging.getLogger(__name__)

FramesCallback = Callable[[int], None]


@dataclass(frozen=True)
class VideoOutcome:
    """A finished video: frames written, wall time of the unit (decode, matte, encode), the
    downsample ratio used and the engine that ran it."""

    frames: int
    seconds: float
    downsample_ratio: float
    engine: str

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def remove_stale_partials(output: Path) -> int:
    """Remove what an interrupted writer of `output` left beside it (`.NAME.<hex>.partial*`).

    A killed worker never runs its writer's clean-up; one video is written by one actor at a
    time, so whatever staging of this output exists when its unit starts is stale."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.[0-9a-f]{{12}}\.partial(\.\w+)?")
    removed = 0
    if output.parent.is_dir():
        for entry in output.parent.iterdir():
            if pattern.fullmatch(entry.name):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d stale partial output(s) of %s", removed, output)
    return removed


def iter_matte_video(
    engine: Engine, task: VideoTask, spec: BatchSpec
) -> Generator[int, None, VideoOutcome]:
    """Matte `task.input` into `task.output`, yielding the count of frames written after each
    frame and returning the outcome. The output is published only when every frame is
    written; closing the generator early (or an error) discards it.

    Raises:
        VideoError: the input cannot be decoded or the output cannot be written.
    """
    started = time.monotonic()
    info = probe(task.input)
    ratio = resolve_downsample_ratio(spec.downsample, info.width, info.height)
    bg = None
    if spec.output == "composite":
        bg = parse_background(spec.background, info.width, info.height)
    remove_stale_partials(task.output)
    writer = MatteWriter(
        {spec.output: task.output},
        width=info.width,
        height=info.height,
        fps=info.fps,
        background=bg,
        # As `ptq4vm matte --composite-out`: a composite keeps the input's audio.
        audio_from=task.input,
    )
    count = 0
    with writer:
        for out in matte_frames(engine, iter_frames(task.input), ratio):
            fgr = rgb_to_uint8(out.fgr) if writer.needs_fgr else None
            writer.write(alpha_to_uint8(out.pha), fgr)
            count += 1
            yield count
    return VideoOutcome(count, time.monotonic() - started, ratio, engine.name)


def matte_video(
    engine: Engine, task: VideoTask, spec: BatchSpec, on_frames: FramesCallback | None = None
) -> VideoOutcome:
    """:func:`iter_matte_video` run to the end; `on_frames(n)` after each frame."""
    steps = iter_matte_video(engine, task, spec)
    while True:
        try:
            count = next(steps)
        except StopIteration as stop:
            outcome: VideoOutcome = stop.value
            return outcome
        if on_frames is not None:
            on_frames(count)
