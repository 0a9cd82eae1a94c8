"""`ptq4vm matte`: alpha, foreground and composites for a video or a frame directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ptq4vm_core.cli.common import console, progress_bar, user_errors
from ptq4vm_core.engine import EngineKind, load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.mattes import MatteWriter, Output
from ptq4vm_core.io.video import iter_frames, parse_background, probe
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
        targets: dict[Output, Path] = {}
        if alpha_out:
            targets["alpha"] = alpha_out
        if fgr_out:
            targets["fgr"] = fgr_out
        if composite_out:
            targets["composite"] = composite_out
        outputs = MatteWriter(
            targets,
            width=info.width,
            height=info.height,
            fps=info.fps,
            background=bg,
            audio_from=input,
        )
        with outputs, progress_bar() as progress:
            task = progress.add_task(f"matte [{runner.name}]", total=info.frame_count)
            count = 0
            for out in matte_frames(runner, iter_frames(input), ratio):
                fgr = rgb_to_uint8(out.fgr) if outputs.needs_fgr else None
                outputs.write(alpha_to_uint8(out.pha), fgr)
                count += 1
                progress.advance(task)
        console.print(
            f"{count} frames matted with {runner.name} at downsample {ratio:g}", highlight=False
        )
