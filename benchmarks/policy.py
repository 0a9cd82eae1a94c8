"""What each family of grids of the deployed graph costs in quality, as commands (issue 16).

The deployed int8 graph has grids on more than the convs' inputs: on the conv outputs the
runtime requantizes (residual adds, hard-swish, gates, GRU maths) and, for convs over a
concatenation, on each concatenated tensor. Each variant below is calibrated with the same
method, data and seed; each runs in simulation and, where the runtime can run it, on the
deployed engine (`auto`), scored on the evaluation clips against their exact ground truth:

* `all-integer`: the default policy (`rvm_policy`): conv inputs, each concatenated input on
  its own grid, conv outputs: every integer tensor of the deployed graph calibrated;
* `one grid per concat`: as above, but a conv over a concatenation quantizes it on one grid;
* `conv inputs only`: no output grids (what calibration covered before; the runtime cannot
  run it without grids of its own, so simulation only).

    python benchmarks/policy.py --profile fast --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptq4vm_core.artifact import read_manifest, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.calib.methods import PROFILES, Method, Profile
from ptq4vm_core.engine import load_engine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.model.recipe import rvm_policy
from ptq4vm_core.model.weights import load_rvm_from_onnx
from ptq4vm_core.paths import cache_root
from ptq4vm_core.quant.spec import QuantPolicy

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
KEYS = ("MAD", "MSE", "dtSSD", "MAD_vs_fp32")


def variants(bits: str) -> dict[str, tuple[QuantPolicy, bool]]:
    """label -> (policy, deployable)."""
    return {
        "all-integer": (rvm_policy(bits), True),
        "one grid per concat": (rvm_policy(bits, parts=False), True),
        "conv inputs only": (rvm_policy(bits, outputs=False, parts=False), False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="fast", choices=[p.value for p in Profile])
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--method", default="qdrop", choices=["minmax", "brecq", "qdrop"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    parser.add_argument("--sim", action="store_true", help="also score deployable ones in sim")
    parser.add_argument("--work", type=Path, default=cache_root() / "bench" / "policy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    clip = sample_clip_path()
    fp32 = load_engine("fp32")
    clips = build_eval_clips(fp32, clip, cache_root() / "evalclips")
    rows: list[dict[str, object]] = [
        {"variant": "fp32", "engine": "fp32", **evaluate_clips(fp32, clips, reference=fp32)}
    ]
    print(json.dumps(rows[-1]), flush=True)
    rvm = load_rvm_from_onnx(weights_path())
    prof = PROFILES[Profile(args.profile)]
    for label, (policy, deployable) in variants(args.bits).items():
        if args.only and label not in args.only:
            continue
        for seed in args.seeds:
            data = build_calibration_set(
                [clip], frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side,
                seed=seed,
            )  # fmt: skip
            tag = label.replace(" ", "_")
            out = args.work / f"{args.method}-{args.bits}-{args.profile}-{tag}-s{seed}"
            if (out / "manifest.json").is_file():  # reused: an interrupted run resumes
                seconds = float(read_manifest(out).timings.get("total", float("nan")))
                artifact = out
            else:
                started = time.monotonic()
                result = calibrate(
                    rvm, data, bits=args.bits, method=Method(args.method),
                    profile=Profile(args.profile), policy=policy, seed=seed,
                    progress=lambda event: None,
                )  # fmt: skip
                seconds = time.monotonic() - started
                artifact = save_artifact(result, data, out)
            # The deployed engine where the runtime can run the policy; the simulation (slow:
            # fake quantization in PyTorch) where it cannot, or with --sim.
            engines = ["auto"] if deployable else ["sim"]
            if args.sim and deployable:
                engines.append("sim")
            for engine in engines:
                metrics = evaluate_clips(load_engine(str(artifact), engine), clips, reference=fp32)
                row = {"variant": label, "engine": engine, "seed": seed, "seconds": seconds}
                rows.append(row | metrics)
                print(json.dumps(rows[-1]), flush=True)

    summary = _summary(rows)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "load_average_at_start": load,
        "command": f"python benchmarks/policy.py --profile {args.profile} --bits {args.bits} "
        f"--method {args.method} --seeds {' '.join(map(str, args.seeds))}",
    }
    name = f"policy-{args.method}-{args.bits}-{args.profile}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2)
    )
    fp = summary[0]
    lines = [
        f"# Grid families of the deployed graph ({args.method} {args.bits}, {args.profile})",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; load average "
        f"{load}). Calibrated on the sample clip; scored on the evaluation clips "
        f"({', '.join(c.name for c in clips)}). MAD, MSE x1e3, dtSSD x1e2; mean (and stdev) over "
        f"seeds {', '.join(map(str, args.seeds))}; vs FP32 = (metric / FP32's - 1).",
        "",
        "| variant | engine | MAD | MAD vs FP32 | dtSSD | dtSSD vs FP32 | MSE | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        mad, dt = row["MAD"], row["dtSSD"]
        lines.append(
            f"| {row['variant']} | {row['engine']} | {mad[0]:.3f} ± {mad[1]:.3f} | "
            f"{100 * (mad[0] / fp['MAD'][0] - 1):+.1f} % | {dt[0]:.3f} ± {dt[1]:.3f} | "
            f"{100 * (dt[0] / fp['dtSSD'][0] - 1):+.1f} % | {row['MSE'][0]:.3f} | {row['n']} |"
        )
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _summary(rows: list[dict[str, object]]) -> list[dict[str, Any]]:
    """Mean and stdev over seeds per (variant, engine)."""
    groups: dict[tuple[object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["engine"]), []).append(row)
    out = []
    for (variant, engine), group in groups.items():
        entry: dict[str, Any] = {"variant": variant, "engine": engine, "n": len(group)}
        for key in KEYS:
            values = [float(str(r[key])) for r in group if key in r]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[key] = (statistics.fmean(values), spread)
        out.append(entry)
    return out


if __name__ == "__main__":
    main()
