"""`ptq4vm matte`: alpha, foreground and composites for a video or a frame directory."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from ptq4vm_core.cli.common import console, progress_bar, user_errors
from ptq4vm_core.engine import EngineKind, load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.video import (
    FrameWriter,
    Kind,
    composite,
    iter_frames,
    open_writer,
    parse_background,
    probe,
)
from ptq4vm_core.pipeline import matte_frames, resolve_downsample_ratio


def matte_command(
    input: Annotated[Path, typer.Argument(help="Video file or directory of PNG/JPG frames.")],
    model: Annotated[str, typer.Option(help="fp32, a registry version or an artifact dir.")],
    downsample: Annotated[
        float | None,
        typer.Option(help="Network resolution as a fraction of the input (default: ~512 px)."),
    ] = None,
    alpha_out: Annotated[Path | None, typer.Option(help="Alpha: video file or PNG dir.")] = None,
    fgr_out: Annotated[Path | None, typer.Option(help="Foreground: video file or PNG dir.")] = None,
    composite_out: Annotated[
        Path | None, typer.Option(help="Composite over --background: video file or PNG dir.")
    ] = None,
    background: Annotated[
        str, typer.Option(help="Colour (green, #00ff00, 0,255,0) or an image path.")
    ] = "green",
    engine: Annotated[EngineKind, typer.Option(help="auto = the deployed engine.")] = (
        EngineKind.AUTO
    ),
) -> None:
    """Matte INPUT and write the requested outputs (frame count and fps kept)."""
    with user_errors():
        if not (alpha_out or fgr_out or composite_out):
            raise ValueError("nothing to write: give --alpha-out, --fgr-out or --composite-out")
        info = probe(input)
        ratio = resolve_downsample_ratio(downsample, info.width, info.height)
        bg = parse_background(background, info.width, info.height) if composite_out else None
        runner = load_engine(model, engine)

        def writer(path: Path, kind: Kind, audio: bool) -> FrameWriter:
            return open_writer(
                path,
                kind,
                width=info.width,
                height=info.height,
                fps=info.fps,
                audio_from=input if audio else None,
            )

        with ExitStack() as stack, progress_bar() as progress:
            alpha_w = stack.enter_context(writer(alpha_out, "alpha", False)) if alpha_out else None
            fgr_w = stack.enter_context(writer(fgr_out, "rgb", True)) if fgr_out else None
            comp_w = (
                stack.enter_context(writer(composite_out, "rgb", True)) if composite_out else None
            )
            task = progress.add_task(f"matte [{runner.name}]", total=info.frame_count)
            count = 0
            for out in matte_frames(runner, iter_frames(input), ratio):
                pha = alpha_to_uint8(out.pha)
                if alpha_w is not None:
                    alpha_w.write(pha)
                if fgr_w is not None or comp_w is not None:
                    fgr = rgb_to_uint8(out.fgr)
                    if fgr_w is not None:
                        fgr_w.write(fgr)
                    if comp_w is not None and bg is not None:
                        comp_w.write(composite(fgr, pha, bg))
                count += 1
                progress.advance(task)
        console.print(
            f"{count} frames matted with {runner.name} at downsample {ratio:g}", highlight=False
        )
