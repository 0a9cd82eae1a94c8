"""`ptq4vm calibrate`: FP32 model + clips -> quantized artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ptq4vm_core.artifact import load_artifact, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import PROFILES, Base, Method, Profile
from ptq4vm_core.calib.progress import ProgressEvent
from ptq4vm_core.calib.synthetic import build_synthetic_clips
from ptq4vm_core.cli.common import console, user_errors
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.model.recipe import CHEAP_INPUTS, SENSITIVE_INPUTS, rvm_policy
from ptq4vm_core.paths import cache_root
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
) -> None:
    """Quantize RVM with METHOD at BITS on CLIPS and write an artifact to OUT."""
    with user_errors():
        # DESIGN 4.2 spells `--clips PATH [PATH ...]`; click options take one value, so the
        # paths after the first arrive as extra arguments.
        clips = [*clips, *(Path(a) for a in ctx.args)]
        if bits not in BITS:
            raise ValueError(f"--bits must be one of {', '.join(BITS)}, got {bits!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {device!r}")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda asked for, but no CUDA device is available")
        ptq4vm = None
        if method is Method.PTQ4VM:
            ptq4vm = Ptq4vmOptions(base=base, gac=not no_gac, ofa=not no_ofa)
        elif no_gac or no_ofa or base is not Base.QDROP or biq_from is not None:
            raise ValueError(
                "--no-gac, --no-ofa, --base and --biq-from apply to --method ptq4vm only"
            )
        names = tuple(n.strip() for n in float_inputs.split(",") if n.strip())
        presets: dict[tuple[str, ...], tuple[str, ...]] = {
            ("sensitive",): SENSITIVE_INPUTS,
            ("cheap",): CHEAP_INPUTS,
        }
        floats = presets.get(names, names)
        # refuses unknown names before the work
        policy = rvm_policy(bits, float_inputs=floats, target=int8_target)
        biq = None if biq_from is None else load_artifact(biq_from)
        if biq is not None and biq.manifest.method != base.value:
            raise ValueError(
                f"--biq-from {biq_from} was calibrated with {biq.manifest.method}, but PTQ4VM's "
                f"BIQ stage here is {base.value} (--base)"
            )
        prof = PROFILES[profile]
        if synthetic_backgrounds:
            clips += build_synthetic_clips(
                load_engine(FP32), sample_clip_path(), cache_root() / "cache" / "synthetic",
                synthetic_backgrounds, seed=seed,
            )  # fmt: skip
        data = build_calibration_set(
            clips, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side, seed=seed
        )
        fp = load_rvm_from_onnx(weights_path())
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

            result = calibrate(
                fp, data, bits=bits, method=method, profile=profile, device=device,
                progress=show, seed=seed, ptq4vm=ptq4vm, policy=policy,
                biq_model=None if biq is None else biq.model, target=int8_target,
            )  # fmt: skip
        path = save_artifact(result, data, out)
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
