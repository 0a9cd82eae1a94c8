"""The PTQ4VM paper's ablation on RVM, as one command.

Rows, at each bit width: FP32, MinMax, BRECQ, BRECQ+GAC, BRECQ+GAC+OFA, QDrop, QDrop+GAC,
QDrop+GAC+OFA; and beyond the paper, QDrop+GAC+OFA without the occlusion mask (every pixel's
flow trusted) to show what the forward-backward check is worth, and with `--mixed BITS` QDrop
and QDrop+GAC+OFA in mixed precision: the inputs of the four most sensitive layers in float
(`model.recipe.SENSITIVE_INPUTS`, "mixed") and of the three of them that are cheap in float
(`model.recipe.CHEAP_INPUTS`, "mixed, cheap"). All are calibrated on the
sample clip with one profile; the BIQ artifacts are those of `benchmarks/baselines.py` (built
here when missing) and the global stage starts from them, so every +GAC row differs from its
base row by the global stage alone. Scored on the ground-truth evaluation clips with the
PyTorch simulation; effective GFLOPs count each convolution's multiply-accumulates at
1920x1080, downsample 0.25 (RVM's setting) times its bit width over 32. Writes
docs/benchmarks/ablation-<profile>.{md,json,png}.

    python benchmarks/ablation.py --profile standard --bits w8a8 w4a4 --mixed w8a8 --reuse
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ptq4vm_core.artifact import load_artifact, read_manifest, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import CalibrationSet, build_calibration_set
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.calib.methods import PROFILES, Base, Method, Profile
from ptq4vm_core.engine import load_engine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.io.metrics import METRIC_NAMES
from ptq4vm_core.model import MattingNetwork, load_rvm_from_onnx
from ptq4vm_core.model.flops import conv_macs, effective_gflops
from ptq4vm_core.model.recipe import CHEAP_INPUTS, SENSITIVE_INPUTS, rvm_policy
from ptq4vm_core.paths import cache_root

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CLI = [sys.executable, "-m", "ptq4vm_core.cli"]
COLUMNS = (*METRIC_NAMES, "MAD_vs_fp32")


def layer_bits(bits: str, float_inputs: tuple[str, ...] = ()) -> dict[str, int]:
    """Per conv, the wider of its weight and activation bit widths under `rvm_policy`."""
    policy = rvm_policy(bits, float_inputs=float_inputs)
    out = {}
    for name in conv_names():
        layer = policy.for_layer(name)
        if layer is not None:
            act = layer.activation.bits if layer.activation is not None else 32
            out[name] = max(layer.weight.bits, act)
    return out


def conv_names() -> list[str]:
    with torch.device("meta"):
        net = MattingNetwork()
    return [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]


# Mixed-precision variants: (label, artifact name suffix, --float-inputs preset, layers).
MIXED = [
    ("mixed", "-mixed", "sensitive", SENSITIVE_INPUTS),
    ("mixed, cheap", "-mixed3", "cheap", CHEAP_INPUTS),
]


def base_artifact(
    method: str, bits: str, profile: str, work: Path, suffix: str = "", preset: str = ""
) -> Path:
    path = work / "baselines" / f"{method}{suffix}-{bits}-{profile}"
    if not (path / "manifest.json").is_file():
        subprocess.run(
            [*CLI, "calibrate", "--clips", str(sample_clip_path()), "--bits", bits,
             "--method", method, "--profile", profile, "--out", str(path),
             *(["--float-inputs", preset] if preset else [])],
            check=True,
        )  # fmt: skip
    return path


def global_stage(
    fp: MattingNetwork, data: CalibrationSet, base: Path, opts: Ptq4vmOptions, bits: str,
    profile: Profile, out: Path, reuse: bool, float_inputs: tuple[str, ...] = (), seed: int = 0,
) -> Path:  # fmt: skip
    """PTQ4VM's global stage on the BIQ artifact `base`, saved at `out`."""
    if reuse and (out / "manifest.json").is_file():
        return out
    biq = load_artifact(base).model
    result = calibrate(
        fp, data, bits=bits, method=Method.PTQ4VM, profile=profile, ptq4vm=opts, biq_model=biq,
        policy=rvm_policy(bits, float_inputs=float_inputs), seed=seed,
    )  # fmt: skip
    return save_artifact(result, data, out)


def seconds(artifact: Path) -> dict[str, float]:
    timings = read_manifest(artifact).timings
    return {k: float(timings.get(k, float("nan"))) for k in ("biq", "gac", "total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", type=Profile, default=Profile.STANDARD)
    parser.add_argument("--bits", nargs="+", default=["w8a8", "w4a4"])
    parser.add_argument("--work", type=Path, default=cache_root() / "bench")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already built")
    parser.add_argument("--no-nomask", action="store_true", help="skip the unmasked-OFA rows")
    parser.add_argument("--bases", nargs="+", type=Base, default=[Base.BRECQ, Base.QDROP])
    parser.add_argument("--no-minmax", action="store_true", help="skip the MinMax rows")
    parser.add_argument(
        "--mixed",
        nargs="*",
        default=[],
        metavar="BITS",
        help="at these bit widths also QDrop and QDrop+GAC+OFA with the sensitive inputs in float",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    profile: Profile = args.profile
    prof = PROFILES[profile]

    clips = build_eval_clips(load_engine("fp32"), sample_clip_path(), cache_root() / "evalclips")
    reference = load_engine("fp32")
    fp = load_rvm_from_onnx(weights_path())
    hd = torch.rand(1, 3, 1080, 1920)
    macs = conv_macs(fp, lambda: fp(hd, None, 0.25))
    data = build_calibration_set(
        [sample_clip_path()], frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side
    )
    rows: list[dict[str, object]] = []

    def add(config: str, bits: str, model: str, engine: str, timing: dict[str, float],
            float_inputs: tuple[str, ...] = ()) -> None:  # fmt: skip
        per_layer = layer_bits(bits, float_inputs) if bits != "w32a32" else {}
        gflops = effective_gflops(macs, per_layer)
        metrics = evaluate_clips(load_engine(model, engine), clips, reference=reference)
        rows.append({"config": config, "bits": bits, "gflops": gflops, **timing, **metrics})
        print(json.dumps(rows[-1]), flush=True)

    add("FP32", "w32a32", "fp32", "auto", {})
    for bits in args.bits:
        if not args.no_minmax:
            minmax = base_artifact("minmax", bits, profile, args.work)
            add("MinMax", bits, str(minmax), "sim", seconds(minmax))
        for base in args.bases:
            biq = base_artifact(base.value, bits, profile, args.work)
            name = "BRECQ" if base is Base.BRECQ else "QDrop"
            add(name, bits, str(biq), "sim", seconds(biq))
            variants = [(Ptq4vmOptions(base, ofa=False), "+GAC"), (Ptq4vmOptions(base), "+GAC+OFA")]
            if base is Base.QDROP and not args.no_nomask:
                variants.append(
                    (Ptq4vmOptions(base, mask_occlusions=False), "+GAC+OFA (no occlusion mask)")
                )
            for opts, suffix in variants:
                out = args.work / "ablation" / f"{opts.label()}-{bits}-{profile.value}"
                path = global_stage(fp, data, biq, opts, bits, profile, out, args.reuse)
                timing = seconds(path)
                timing["biq"] = seconds(biq)["biq"]
                add(name + suffix, bits, str(path), "sim", timing)
        for label, suffix, preset, layers in MIXED if bits in args.mixed else []:
            biq = base_artifact("qdrop", bits, profile, args.work, suffix, preset)
            add(f"QDrop ({label})", bits, str(biq), "sim", seconds(biq), layers)
            opts = Ptq4vmOptions(Base.QDROP)
            out = args.work / "ablation" / f"{opts.label()}{suffix}-{bits}-{profile.value}"
            path = global_stage(fp, data, biq, opts, bits, profile, out, args.reuse, layers)
            timing = seconds(path) | {"biq": seconds(biq)["biq"]}
            add(f"QDrop+GAC+OFA ({label})", bits, str(path), "sim", timing, layers)

    write(rows, args, clips, time.monotonic() - started)


def write(rows: list[dict[str, object]], args: argparse.Namespace, clips: list[Path],
          wall: float) -> None:  # fmt: skip
    profile = args.profile.value
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "profile": profile,
        "eval_clips": [c.name for c in clips],
        "command": f"python benchmarks/ablation.py --profile {profile} --bits "
        f"{' '.join(args.bits)} --bases {' '.join(b.value for b in args.bases)}"
        + (" --no-minmax" if args.no_minmax else "")
        + (f" --mixed {' '.join(args.mixed)}" if args.mixed else "")
        + (" --reuse" if args.reuse else ""),
        "wall_s": wall,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"ablation-{profile}"
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def num(row: dict[str, object], key: str, fmt: str = ".3f") -> str:
        value = row.get(key)
        return "-" if not isinstance(value, float) or value != value else format(value, fmt)

    lines = [
        f"# PTQ4VM ablation on RVM ({profile} profile)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}). Calibrated on "
        "the sample clip only; evaluated on clips built from it (FP32 foreground and alpha over "
        f"moving backgrounds: {', '.join(meta['eval_clips'])}), mean over clips. MAD and MSE "
        "x1e3, Grad and Conn /1e3, dtSSD x1e2 (RVM's scales); MAD vs FP32 is the mean "
        "|alpha - FP32 alpha| x1e3. GFLOPs: convolution multiply-accumulates at 1920x1080, "
        "downsample 0.25, times bits/32 per layer (the first and last layers stay at 8 bits). "
        "BIQ s and global s: calibration times of the two stages on this CPU. Each row is "
        "one calibration run; at W4A4 one run of the global stage is not a measurement (the "
        "same configuration trained in two processes lands up to ~30% apart): "
        "`benchmarks/seeds.py` repeats it over seeds, with mean and spread "
        "([seeds-qdrop-w4a4.md](seeds-qdrop-w4a4.md)).",
        "",
        "| config | bits | MAD | MSE | Grad | Conn | dtSSD | MAD vs FP32 | GFLOPs | BIQ s "
        "| global s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['bits']} | "
            + " | ".join(num(r, k) for k in COLUMNS)
            + f" | {num(r, 'gflops', '.2f')} | {num(r, 'biq', '.0f')} | {num(r, 'gac', '.0f')} |"
        )
    lines += ["", f"![MSE and dtSSD]({name}.png)", ""]
    (OUT / f"{name}.md").write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['config']}\n{r['bits']}" for r in rows]
    for ax, key in zip(axes, ("MSE", "dtSSD"), strict=True):
        ax.barh(labels, [float(r[key]) for r in rows])  # type: ignore[arg-type]
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel(f"{key} (log scale, lower is better)")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"PTQ4VM ablation on RVM ({profile})")
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=120)
    print(f"wrote {OUT / f'{name}.md'}")


if __name__ == "__main__":
    main()
