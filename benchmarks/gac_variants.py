"""PTQ4VM's global stage under several GacConfig settings, from one QDrop BIQ.

The table "GAC at W8A8: what was tried" in docs/quantization.md. QDrop is calibrated once (or
reused) on the sample clip (plus N labelled synthetic clips with --synthetic N); each variant
runs the global stage (GAC+OFA, the profile's steps) from it, prints its report (held-out
objective start -> end, kept step) and, when it kept its end, the MAD/MSE/dtSSD of the PyTorch
simulation on the evaluation clips (a kept start is the QDrop model).

    python benchmarks/gac_variants.py --bits w8a8 --profile fast \\
        '{"old": {"lr_gamma": 0.01, "lr_beta": 0.01, "holdout": 0}, "default": {}}'
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

from ptq4vm_core.artifact import load_artifact, save_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import OFA_WEIGHT, CalibrationResult, calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.calib.flow import load_or_compute_flows
from ptq4vm_core.calib.gac import GacConfig, global_correction
from ptq4vm_core.calib.methods import PROFILES, Method, Profile
from ptq4vm_core.calib.synthetic import build_synthetic_clips
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.model.recipe import rvm_policy
from ptq4vm_core.paths import cache_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", help="JSON: name -> GacConfig overrides")
    parser.add_argument("--profile", type=Profile, default=Profile.FAST)
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--synthetic", type=int, default=0)
    parser.add_argument("--work", type=Path, default=cache_root() / "bench" / "gac")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    prof = PROFILES[args.profile]
    fp32 = load_engine(FP32)
    sample = sample_clip_path()
    clips = build_eval_clips(fp32, sample, cache_root() / "evalclips")
    reference = load_engine(FP32, "torch")
    fp = load_rvm_from_onnx(weights_path())
    base = args.work / f"qdrop-{args.bits}-{args.profile.value}"
    if not (base / "manifest.json").is_file():
        plain = build_calibration_set(
            [sample], frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side
        )
        result = calibrate(fp, plain, bits=args.bits, method=Method.QDROP, profile=args.profile)
        save_artifact(result, plain, base)
        print("QDROP", json.dumps(evaluate_clips(load_engine(str(base), "sim"), clips)))
    calib = [sample]
    if args.synthetic:
        calib += build_synthetic_clips(
            fp32, sample, cache_root() / "cache" / "synthetic", args.synthetic
        )
    data = build_calibration_set(
        calib, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side
    )
    flows = load_or_compute_flows(data.frames)
    biq = load_artifact(base).model
    for name, overrides in json.loads(args.variants).items():
        torch.manual_seed(0)
        model = copy.deepcopy(biq)
        defaults = {"iters": prof.gac_iters, "window": prof.gac_window,
                    "ofa_weight": OFA_WEIGHT}  # fmt: skip
        cfg = GacConfig(**(defaults | overrides))
        started = time.monotonic()
        report = global_correction(model, fp, data, cfg, flows=flows)
        seconds = time.monotonic() - started
        row: dict[str, object] = {"variant": name, "synthetic": args.synthetic,
                                  "report": report.to_dict(), "s": seconds}  # fmt: skip
        if report.best_step:
            result = CalibrationResult(
                model, rvm_policy(args.bits), Method.PTQ4VM, args.bits, args.profile, [],
                {"total": seconds}, {"gac": cfg.to_dict(), "gac_report": report.to_dict()},
                report,
            )  # fmt: skip
            out = save_artifact(result, data, args.work / f"{name}-{args.synthetic}")
            metrics = evaluate_clips(load_engine(str(out), "sim"), clips, reference=reference)
            row |= {k: metrics[k] for k in ("MAD", "MSE", "dtSSD", "MAD_vs_fp32")}
        print("VARIANT", json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
