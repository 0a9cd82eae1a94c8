"""Label-free vs labelled calibration, scored apart on backgrounds unlike the calibration ones.

From one QDrop BIQ on the sample clip, PTQ4VM's global stage (GAC+OFA) twice:
- label-free: on the sample clip alone, the target is the FP32 model's alpha;
- labelled: on the sample clip plus N labelled clips synthesized from it (what
  `ptq4vm calibrate --synthetic-backgrounds N` adds: the FP32 foreground and alpha over
  calibration-family backgrounds), where the global stage trains on the ground truth.
BIQ is shared so the rows differ only in the global stage's data and target (the CLI's option
feeds BIQ the larger set too). The global stage runs once per seed (mean and stdev
reported). Each model is scored with the PyTorch simulation on two groups of ground-truth
clips, reported apart:
- "unlike": the evaluation family (`io.evalclip.BACKGROUNDS`), generators the calibration never
  uses;
- "in-family": the calibration generators at held-out seeds (`FAMILY_SEED`), backgrounds like
  the synthetic calibration ones but never calibrated on.
Writes docs/benchmarks/labelled-<bits>-<profile>.{md,json}.

    python benchmarks/labelled.py --profile fast --bits w8a8 --synthetic 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from ptq4vm_core.artifact import load_artifact, read_manifest, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import CalibrationSet, build_calibration_set
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.calib.methods import PROFILES, Method, Profile
from ptq4vm_core.calib.synthetic import build_synthetic_clips
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.base import Engine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.model import MattingNetwork, load_rvm_from_onnx
from ptq4vm_core.paths import cache_root

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
FAMILY_SEED = 999  # calibration_backgrounds(seed=999): seeds 999000.., never calibrated on
KEYS = ("MAD", "MSE", "dtSSD", "MAD_vs_fp32")


def eval_groups(fp32: Engine, sample: Path) -> dict[str, list[Path]]:
    """The ground-truth clips scored apart: "unlike" (the evaluation family) and "in-family"
    (the calibration generators at held-out seeds), built from the sample clip and cached."""
    return {
        "unlike": build_eval_clips(fp32, sample, cache_root() / "evalclips"),
        "in-family": build_synthetic_clips(
            fp32, sample, cache_root() / "evalclips-family", 3, seed=FAMILY_SEED
        ),
    }


def score(engine: Engine, groups: dict[str, list[Path]], reference: Engine) -> dict[str, float]:
    out: dict[str, float] = {}
    for group, clips in groups.items():
        metrics = evaluate_clips(engine, clips, reference=reference)
        out |= {f"{group}.{k}": metrics[k] for k in KEYS}
    return out


def calibrated(
    fp: MattingNetwork, data: CalibrationSet, out: Path, bits: str, profile: Profile,
    seed: int, biq: Path | None = None,
) -> Path:  # fmt: skip
    """QDrop (biq None) or PTQ4VM's global stage on the QDrop artifact `biq`, saved at `out`."""
    if (out / "manifest.json").is_file():
        return out
    if biq is None:
        result = calibrate(fp, data, bits=bits, method=Method.QDROP, profile=profile, seed=seed)
    else:
        result = calibrate(
            fp, data, bits=bits, method=Method.PTQ4VM, profile=profile, seed=seed,
            ptq4vm=Ptq4vmOptions(), biq_model=load_artifact(biq).model,
        )  # fmt: skip
    return save_artifact(result, data, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", type=Profile, default=Profile.FAST)
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--synthetic", type=int, default=3, help="labelled synthetic clips")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=cache_root() / "bench" / "labelled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    prof = PROFILES[args.profile]
    fp32 = load_engine(FP32)
    sample = sample_clip_path()
    groups = eval_groups(fp32, sample)
    synthetic = build_synthetic_clips(
        fp32, sample, cache_root() / "cache" / "synthetic", args.synthetic
    )
    fp = load_rvm_from_onnx(weights_path())
    reference = load_engine(FP32, "torch")
    rows: list[dict[str, object]] = [{"config": "FP32", "seed": None,
                                      **score(reference, groups, reference)}]  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    sets = {"label-free": [sample], "labelled": [sample, *synthetic]}
    datas = {
        name: build_calibration_set(
            clips, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side
        )
        for name, clips in sets.items()
    }
    tag = f"{args.bits}-{args.profile.value}"
    biq = calibrated(fp, datas["label-free"], args.work / f"qdrop-{tag}", args.bits,
                     args.profile, 0)  # fmt: skip
    rows.append({"config": "QDrop", "seed": None,
                 **score(load_engine(str(biq), "sim"), groups, reference)})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    for seed in args.seeds:
        for name, data in datas.items():
            out = args.work / f"ptq4vm-{tag}-{name}-s{seed}"
            path = calibrated(fp, data, out, args.bits, args.profile, seed, biq)
            report = read_manifest(path).raw["config"]["gac_report"]
            rows.append({"config": f"PTQ4VM ({name})", "seed": seed,
                         **score(load_engine(str(path), "sim"), groups, reference),
                         "kept_step": report["best_step"]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    write(rows, args, groups, time.monotonic() - started)


def write(
    rows: list[dict[str, object]], args: argparse.Namespace, groups: dict[str, list[Path]],
    wall: float,
) -> None:  # fmt: skip
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python benchmarks/labelled.py --profile {args.profile.value} --bits "
        f"{args.bits} --synthetic {args.synthetic} --seeds {' '.join(map(str, args.seeds))}",
        "groups": {g: [c.name for c in clips] for g, clips in groups.items()},
        "wall_s": wall,
    }
    name = f"labelled-{args.bits}-{args.profile.value}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    by_config: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_config.setdefault(str(row["config"]), []).append(row)
    columns = [f"{g}.{k}" for g in groups for k in KEYS]
    names = {g: [c.name for c in clips] for g, clips in groups.items()}

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    lines = [
        f"# Label-free vs labelled calibration ({args.bits}, {args.profile.value} profile)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} in {wall:.0f} s. PyTorch "
        "simulation. MAD and MSE x1e3, dtSSD x1e2, MAD vs FP32 x1e3; PTQ4VM rows: mean ± "
        "stdev over the seeds of the global stage. Groups, reported apart: unlike = "
        f"{', '.join(names['unlike'])} (generators calibration never uses); "
        f"in-family = {', '.join(names['in-family'])} (the calibration generators at "
        "held-out seeds).",
        "",
        "| config | runs | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for config, runs in by_config.items():
        cells = [cell([float(r[c]) for r in runs]) for c in columns]  # type: ignore[arg-type]
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(cells) + " |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
