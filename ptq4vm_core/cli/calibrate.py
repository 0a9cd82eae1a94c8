"""`ptq4vm calibrate`: FP32 model + clips -> quantized artifact."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ptq4vm_core.calib.gate import GATE_MARGIN, GATE_MAX_MAD, GateThresholds
from ptq4vm_core.calib.methods import Base, Method, Profile
from ptq4vm_core.calib.pipeline import (
    CalibrationRequest,
    ClipSource,
    float_inputs_named,
    run_calibration,
    run_gate,
)
from ptq4vm_core.calib.progress import ProgressCallback, ProgressEvent
from ptq4vm_core.cli.common import console, user_errors
from ptq4vm_core.engine import FP32
from ptq4vm_core.engine.loader import resolve_artifact
from ptq4vm_core.quant.spec import Bits, Int8Target

BITS = tuple(b.value for b in Bits)


def calibrate_command(
    ctx: typer.Context,
    clips: Annotated[
        list[Path],
        typer.Option(help="Videos, frame dirs, or dirs with com/ and pha/: --clips A B ..."),
    ],
    bits: Annotated[str, typer.Option(help="w8a8, w4a8 or w4a4.")],
    method: Annotated[Method, typer.Option(help="Calibration method.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    profile: Annotated[Profile, typer.Option(help="fast, standard (CPU) or paper (GPU).")] = (
        Profile.STANDARD
    ),
    no_gac: Annotated[bool, typer.Option("--no-gac", help="PTQ4VM without GAC.")] = False,
    no_ofa: Annotated[bool, typer.Option("--no-ofa", help="PTQ4VM without OFA.")] = False,
    base: Annotated[Base, typer.Option(help="PTQ4VM's BIQ stage: qdrop or brecq.")] = Base.QDROP,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Random seed (data and optimisation).")] = 0,
    float_inputs: Annotated[
        str,
        typer.Option(
            help="Mixed precision: layers whose input activations stay in float (weights stay "
            "quantized), comma-separated; 'sensitive' for the four whose 8-bit inputs cost the "
            "most, 'cheap' for the three of them that cost little speed in float (see "
            "docs/quantization.md)."
        ),
    ] = "",
    synthetic_backgrounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Add N labelled clips made from the sample clip: the FP32 model's foreground "
            "and alpha over N synthesized moving backgrounds (textures, clutter, lights; never "
            "the evaluation backgrounds), cached under $PTQ4VM_HOME/cache/synthetic.",
        ),
    ] = 0,
    int8_target: Annotated[
        Int8Target,
        typer.Option(
            help="The x86 int8 kernels to calibrate for: vnni (exact int8 dot products: CPUs "
            "with AVX512-VNNI/AVX-VNNI/AMX, and non-x86) or avx2 (CPUs without VNNI: dense conv "
            "weights learned on a 7-bit grid, so the AVX2 kernels cannot saturate; see "
            "docs/engine.md).",
        ),
    ] = Int8Target.VNNI,
    biq_from: Annotated[
        Path | None,
        typer.Option(
            help="PTQ4VM only: take BIQ's result from this artifact (calibrated with --base's "
            "method at the same bits and float inputs) and run only the global stage on CLIPS.",
        ),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Hold the last FRACTION of each clip's frames out of calibration and run the "
            "quality gate on them (the admin recalibration's: MAD vs FP32, docs/server.md).",
        ),
    ] = None,
    gate_against: Annotated[
        str,
        typer.Option(
            help="With --holdout: the model the candidate must not be worse than "
            "(fp32, a registry version or an artifact dir)."
        ),
    ] = FP32,
    max_mad: Annotated[
        float, typer.Option(min=0.0, help="With --holdout: the gate's MAD-vs-FP32 limit.")
    ] = GATE_MAX_MAD,
    margin: Annotated[
        float,
        typer.Option(min=0.0, help="With --holdout: how much worse than --gate-against passes."),
    ] = GATE_MARGIN,
) -> None:
    """Quantize RVM with METHOD at BITS on CLIPS and write an artifact to OUT (the core's
    calibration pipeline, `calib.pipeline`, as the server's recalibration runs it)."""
    with user_errors():
        # DESIGN 4.2 spells `--clips PATH [PATH ...]`; click options take one value, so the
        # paths after the first arrive as extra arguments.
        clips = [*clips, *(Path(a) for a in ctx.args)]
        if bits not in BITS:
            raise ValueError(f"--bits must be one of {', '.join(BITS)}, got {bits!r}")
        request = CalibrationRequest(
            clips=tuple(ClipSource(c) for c in clips), bits=Bits(bits), method=method,
            profile=profile, seed=seed, int8_target=int8_target, device=device,
            float_inputs=float_inputs_named(float_inputs), base=base, gac=not no_gac,
            ofa=not no_ofa, biq_from=biq_from, synthetic_backgrounds=synthetic_backgrounds,
            holdout=holdout or None,
        )  # fmt: skip
        request.check()  # refuses bad options before the work
        with tempfile.TemporaryDirectory(prefix="ptq4vm-calibrate-") as work:
            with calibration_bar() as show:
                run = run_calibration(request, out, work=Path(work), progress=show)
            gate = None
            if request.holdout is not None:
                thresholds = GateThresholds(
                    max_mad, margin, max_mad_name="--max-mad", margin_name="--margin"
                )
                active = (
                    gate_against if gate_against == FP32 else str(resolve_artifact(gate_against))
                )
                gate = run_gate(
                    run.artifact, run.held_out, thresholds, active=active,
                    active_version=gate_against,
                )  # fmt: skip
    result, path, ptq4vm = run.result, run.artifact, request.ptq4vm()
    label = ptq4vm.label() if ptq4vm is not None else method.value
    Console(highlight=False).print(
        f"{label} {bits} ({profile.value}, int8 target {int8_target.value}) in "
        f"{result.seconds['total']:.0f} s -> {path}"
    )
    if result.gac is not None:
        g = result.gac
        Console(highlight=False).print(
            f"global stage: alpha MSE {g.mse_start:.3g} -> {g.mse_end:.3g}, "
            f"temporal residual {g.ofa_start:.3g} -> {g.ofa_end:.3g}; held-out objective "
            f"{g.val_start:.3g} -> {g.val_end:.3g} on {g.val_sequences} sequence(s), "
            f"kept step {g.best_step} of {g.iters}"
        )
    if gate is not None:
        verdict = "passed" if gate.passed else "failed: " + "; ".join(gate.reasons)
        Console(highlight=False).print(
            f"quality gate on {gate.frames} held-out frames: MAD vs fp32 {gate.candidate_mad:.3f}"
            f" ({gate.active_version}: {gate.active_mad:.3f}) {verdict}"
        )


@contextmanager
def calibration_bar() -> Iterator[ProgressCallback]:
    """A rich progress bar fed by the pipeline's progress events."""
    columns = (
        TextColumn("[bold]{task.fields[stage]}[/] {task.fields[unit]:<8}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("it {task.fields[it]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(
            "calibrate", total=1.0, stage="start", unit="", it="-", loss="-", eta="-"
        )

        def show(event: ProgressEvent) -> None:
            bar.update(
                task,
                completed=event.fraction,
                stage=event.stage,
                unit=event.unit,
                it=f"{event.step}/{event.total}",
                loss="-" if event.loss is None else f"{event.loss:.4g}",
                eta="-" if event.eta_s is None else f"{event.eta_s:.0f}s",
            )

        yield show
