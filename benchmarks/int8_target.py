"""What the saturation-safe int8 target costs: PTQ4VM calibrated for VNNI (8-bit weights) and
for CPUs without VNNI (`--int8-target avx2`: dense conv weights on a 7-bit grid), same profile,
same data, same seeds, scored on ground-truth clips beside FP32.

Each (target, seed) is a whole PTQ4VM calibration (BIQ and the global stage learn on the
target's grid, so nothing is shared between the targets) on the sample clip. Each model is
scored with the PyTorch simulation (what calibration optimised) and with the engine `auto`
deploys on this CPU, on two groups of clips reported apart, as `benchmarks/labelled.py` does:
"unlike" (the evaluation backgrounds, generators calibration never uses) and "in-family" (the
calibration generators at held-out seeds). The summary gives mean ± stdev over the seeds and
the AVX2 target's change against W8A8's mean. Writes
docs/benchmarks/int8-target-<bits>-<profile>.{md,json}; artifacts are kept under --work and
reused.

    python benchmarks/int8_target.py --profile fast --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ptq4vm_core.artifact import read_manifest, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import PROFILES, Method, Profile
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.cpu import cpu_class, cpu_model
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.paths import cache_root
from ptq4vm_core.quant.spec import Int8Target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labelled import OUT, eval_groups, score

SUMMARY = ("MAD", "dtSSD", "MAD_vs_fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", type=Profile, default=Profile.FAST)
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=cache_root() / "bench" / "int8-target")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    prof = PROFILES[args.profile]
    fp32 = load_engine(FP32)
    sample = sample_clip_path()
    groups = eval_groups(fp32, sample)
    fp = load_rvm_from_onnx(weights_path())
    reference = load_engine(FP32, "torch")
    rows: list[dict[str, object]] = [
        {"target": "fp32", "seed": None, "engine": "torch", **score(reference, groups, reference)}
    ]
    print(json.dumps(rows[-1]), flush=True)
    for seed in args.seeds:
        data = build_calibration_set(
            [sample], frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side, seed=seed
        )
        for target in Int8Target:
            out = args.work / f"ptq4vm-{args.bits}-{args.profile.value}-{target.value}-s{seed}"
            if not (out / "manifest.json").is_file():
                result = calibrate(
                    fp, data, bits=args.bits, method=Method.PTQ4VM, profile=args.profile,
                    seed=seed, ptq4vm=Ptq4vmOptions(), target=target,
                )  # fmt: skip
                save_artifact(result, data, out)
            manifest = read_manifest(out)
            for kind in ("sim", "auto"):
                engine = load_engine(str(out), kind)
                rows.append({"target": target.value, "seed": seed, "engine": engine.name,
                             "kind": kind, **score(engine, groups, reference),
                             "calibration_s": manifest.timings.get("total")})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    write(rows, args, groups, time.monotonic() - started)


def write(
    rows: list[dict[str, object]], args: argparse.Namespace, groups: dict[str, list[Path]],
    wall: float,
) -> None:  # fmt: skip
    command = (
        f"python benchmarks/int8_target.py --profile {args.profile.value} --bits {args.bits} "
        f"--seeds {' '.join(map(str, args.seeds))}"
    )
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "cpu": cpu_model(),
        "cpu_class": cpu_class(),
        "groups": {g: [c.name for c in clips] for g, clips in groups.items()},
        "wall_s": wall,
    }
    name = f"int8-target-{args.bits}-{args.profile.value}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    columns = [f"{g}.{k}" for g in groups for k in SUMMARY]
    configs: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        kind = str(row.get("kind", "torch"))
        configs.setdefault((str(row["target"]), kind), []).append(row)

    def mean(runs: list[dict[str, object]], column: str) -> float:
        return statistics.mean(float(r[column]) for r in runs)  # type: ignore[arg-type]

    def cell(runs: list[dict[str, object]], column: str) -> str:
        values = [float(r[column]) for r in runs]  # type: ignore[arg-type]
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    lines = [
        f"# The saturation-safe int8 target vs W8A8 ({args.bits}, {args.profile.value} profile)",
        "",
        f"Generated by `{command}` on {meta['date']} in {wall / 60:.0f} min on {meta['cpu']} "
        f"({meta['cpu_class']}). PTQ4VM (QDrop BIQ + GAC + OFA) on the sample clip, one whole "
        "calibration per target and seed. MAD x1e3, dtSSD x1e2, MAD vs FP32 x1e3; mean ± stdev "
        "over the seeds. `sim`: the PyTorch simulation; `auto`: the engine deployed on this CPU "
        f"(engines: {', '.join(sorted({str(r['engine']) for r in rows if 'kind' in r}))}). "
        f"Groups: unlike = {', '.join(c.name for c in groups['unlike'])} (evaluation "
        f"backgrounds); in-family = {', '.join(c.name for c in groups['in-family'])} "
        "(calibration generators at held-out seeds).",
        "",
        "| target | engine | runs | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for (target, kind), runs in configs.items():
        cells = [cell(runs, c) for c in columns]
        lines.append(f"| {target} | {kind} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The AVX2 target against W8A8 (same engine kind, means over the seeds):",
        "",
        "| engine | " + " | ".join(f"{g} {k}" for g in groups for k in ("MAD", "dtSSD")) + " |",
        "|---|" + "---|" * (2 * len(groups)),
    ]
    for kind in ("sim", "auto"):
        vnni = configs.get((Int8Target.VNNI.value, kind))
        avx2 = configs.get((Int8Target.AVX2.value, kind))
        if not vnni or not avx2:
            continue
        changes = [
            f"{100 * (mean(avx2, f'{g}.{k}') / mean(vnni, f'{g}.{k}') - 1):+.2f}%"
            for g in groups
            for k in ("MAD", "dtSSD")
        ]
        lines.append(f"| {kind} | " + " | ".join(changes) + " |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / f'{name}.md'}")


if __name__ == "__main__":
    main()
