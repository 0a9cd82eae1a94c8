"""`ptq4vm eval`: MAD, MSE, Grad, Conn, dtSSD on a clip with ground truth, next to FP32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ptq4vm_core.cli.common import progress_bar, user_errors
from ptq4vm_core.engine import FP32, EngineKind, load_engine
from ptq4vm_core.evaluate import check_clip_dir, evaluate_clip
from ptq4vm_core.io.video import probe
from ptq4vm_core.pipeline import resolve_downsample_ratio


def eval_command(
    model: Annotated[str, typer.Option(help="fp32, a registry version or an artifact dir.")],
    clip: Annotated[Path, typer.Option(help="Directory with com/ (frames) and pha/ (alpha).")],
    downsample: Annotated[float | None, typer.Option(help="Network resolution fraction.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    engine: Annotated[EngineKind, typer.Option(help="auto = the deployed engine.")] = (
        EngineKind.AUTO
    ),
) -> None:
    """Score MODEL's alpha on CLIP (RVM's metric definitions and scales)."""
    with user_errors():
        com, _ = check_clip_dir(clip)
        info = probe(com)
        ratio = resolve_downsample_ratio(downsample, info.width, info.height)
        runner = load_engine(model, engine)
        reference = None if model == FP32 else load_engine(FP32)
        with progress_bar(transient=True) as progress:
            task = progress.add_task(f"eval [{runner.name}]", total=info.frame_count)
            result = evaluate_clip(
                runner,
                clip,
                ratio,
                reference=reference,
                on_frame=lambda n: progress.update(task, completed=n),
            )
    mad_vs_fp32 = 0.0 if model == FP32 else result.mad_vs_fp32
    if as_json:
        payload = {
            "model": model,
            "engine": runner.name,
            "clip": str(clip),
            "frames": result.frames,
            "size": f"{result.width}x{result.height}",
            "downsample_ratio": ratio,
            **result.metrics,
            "MAD_vs_fp32": mad_vs_fp32,
        }
        typer.echo(json.dumps(payload))
        return
    table = Table(title=f"{model} [{runner.name}] on {clip} ({result.frames} frames, ds {ratio:g})")
    for name in (*result.metrics, "MAD vs FP32"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.4f}" for v in (*result.metrics.values(), mad_vs_fp32 or 0.0)))
    Console(highlight=False).print(table)
