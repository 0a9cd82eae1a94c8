"""`ptq4vm bench`: engine throughput and latency percentiles."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from ptq4vm_core.assets import SAMPLE_CLIP
from ptq4vm_core.bench import bench_frames, run_benchmark
from ptq4vm_core.cli.common import parse_size, progress_bar, user_errors
from ptq4vm_core.engine import EngineKind, load_engine
from ptq4vm_core.engine.runtime import default_threads
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.pipeline import resolve_downsample_ratio


def bench_command(
    model: Annotated[str, typer.Option(help="fp32, a registry version or an artifact dir.")],
    size: Annotated[str, typer.Option(help="Frame size WxH, e.g. 512x288.")],
    downsample: Annotated[float | None, typer.Option(help="Network resolution fraction.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Timed frames.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed frames first.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    engine: Annotated[EngineKind, typer.Option(help="auto = the deployed engine.")] = (
        EngineKind.AUTO
    ),
    alpha_only: Annotated[
        bool, typer.Option("--alpha-only", help="No foreground, as alpha-output streams ask.")
    ] = False,
) -> None:
    """Time MODEL on its engine at SIZE (sample-clip frames resized; state carried)."""
    with user_errors():
        width, height = parse_size(size)
        ratio = resolve_downsample_ratio(downsample, width, height)
        runner = load_engine(model, engine)
        clip = SAMPLE_CLIP.path()
        source = (
            [f for _, f in zip(range(30), iter_frames(clip), strict=False)]
            if clip.is_file()
            else []
        )
        data = bench_frames(source, width, height, frames)
        with progress_bar(transient=True) as progress:
            task = progress.add_task(f"bench [{runner.name}]", total=frames)
            result = run_benchmark(
                runner,
                data,
                ratio,
                warmup=warmup,
                threads=default_threads(),
                alpha_only=alpha_only,
                on_frame=lambda n: progress.update(task, completed=n),
            )
    if as_json:
        extra = {"alpha_only": True} if alpha_only else {}  # the key only when asked for
        typer.echo(json.dumps({"model": model, **extra, **result.as_dict()}))
        return
    Console(highlight=False).print(
        f"{model} [{result.engine}] {result.size} ds {result.downsample_ratio:g}: "
        f"{result.fps:.1f} fps, p50 {result.ms_p50:.1f} ms, p99 {result.ms_p99:.1f} ms "
        f"({result.frames} frames, {result.threads} threads)"
    )
