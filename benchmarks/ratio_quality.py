"""What a lower downsample ratio costs in quality (issue 29, item 4): the ratios the page's tab
mode picks from, per graph it picks from (FP32 and the W8A8 model), on evaluation clips with
exact ground truth at a conferencing size, against the server at ratio 1 on the same frames.

Evaluation clips at --size: the sample clip's FP32 foreground and alpha (ratio 1, at the clip's
own 176x144), resized to --size, composited over the moving procedural backgrounds of
`io.evalclip` (the evaluation family: calibration never sees them) at --size; the resized alpha
is the exact ground truth of those composites. They are cached under the cache root
(`evalclips-WxH/`, each written aside and renamed into place).

Per model and ratio, means over the clips of RVM's MAD and MSE (x1e3) and dtSSD (x1e2) against
the ground truth, and MAD (x1e3) against the server: the same model at ratio 1 on the same
frames, on the server's deployed engine (`--engine`; the tab runs the same ONNX graphs and
matches that engine within 2/255, tests/clients/test_browser_tab.py).

The clip's content is 176x144 upscaled: at --size it has less fine detail than a real camera
gives, so a low ratio loses less here than it would on a sharp HD camera (say so with the
figures).

Usage: python benchmarks/ratio_quality.py --w8a8 DIR [--size 512x288]
           [--ratios 1 0.75 0.5 0.375 0.25] [--out docs/benchmarks/ratio-quality]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.assets import sample_clip_path
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.cli.common import parse_size
from ptq4vm_core.engine import load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8
from ptq4vm_core.io.metrics import SequenceMetrics
from ptq4vm_core.io.video import iter_frames, read_alpha_frames
from ptq4vm_core.paths import cache_root
from ptq4vm_core.pipeline import matte_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import run_header, write_report

METRICS = ("MAD", "MSE", "dtSSD")


def eval_clips(size: tuple[int, int]) -> list[Path]:
    """The evaluation clips at `size` (built once, cached)."""
    root = cache_root() / f"evalclips-{size[0]}x{size[1]}"
    return build_eval_clips(load_engine("fp32"), sample_clip_path(), root, size=size)


def alphas(engine: Any, frames: list[NDArray[np.uint8]], ratio: float) -> list[NDArray[np.uint8]]:
    return [alpha_to_uint8(m.pha) for m in matte_frames(engine, frames, ratio)]


def score(
    model: str, engine_kind: str, clips: list[Path], ratios: list[float]
) -> list[dict[str, Any]]:
    """Per ratio: the metrics against the truth and MAD against `model` at ratio 1, averaged
    over the clips."""
    engine = load_engine(model, engine_kind)
    sums: dict[float, dict[str, float]] = {r: {} for r in ratios}
    for clip in clips:
        frames = list(iter_frames(clip / "com"))
        truth = list(read_alpha_frames(clip / "pha"))
        server = alphas(engine, frames, 1.0)
        for ratio in ratios:
            pred = server if ratio == 1.0 else alphas(engine, frames, ratio)
            metrics = SequenceMetrics(METRICS)
            drift = SequenceMetrics(("MAD",))
            for p, t, s in zip(pred, truth, server, strict=True):
                metrics.update(p, t)
                drift.update(p, s)
            values = {**metrics.result(), "MAD_vs_server_r1": drift.result()["MAD"]}
            for key, value in values.items():
                sums[ratio][key] = sums[ratio].get(key, 0.0) + value / len(clips)
    return [{"ratio": r, **sums[r]} for r in ratios]


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# Quality per downsample ratio at {report['size']} (the tab's choices)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']}; engine: {report['engine']}; "
        f"clips: {', '.join(report['clips'])} ({report['frames']} frames each, 176x144 content "
        f"upscaled to {report['size']}).",
        "",
        "| model | ratio | MAD x1e3 | MSE x1e3 | dtSSD x1e2 | MAD vs server at ratio 1 x1e3 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['ratio']:g} | {row['MAD']:.3f} | {row['MSE']:.3f} "
            f"| {row['dtSSD']:.3f} | {row['MAD_vs_server_r1']:.3f} |"
        )
    lines += [
        "",
        "Against the exact ground truth of the composites; 'vs server at ratio 1': the same "
        "model on the same frames at ratio 1 (what the server mode gives at this size).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--w8a8", type=Path, required=True, help="the W8A8 artifact directory")
    parser.add_argument("--size", default="512x288")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1, 0.75, 0.5, 0.375, 0.25])
    parser.add_argument("--engine", default="auto", help="the server's engine (auto: deployed)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/ratio-quality"))
    args = parser.parse_args()
    header = run_header("ratio_quality.py")
    clips = eval_clips(parse_size(args.size))
    rows = []
    for name, model in (("fp32", "fp32"), ("W8A8", str(args.w8a8))):
        for row in score(model, args.engine, clips, args.ratios):
            rows.append({"model": name, **row})
            print(json.dumps(rows[-1]), flush=True)
    report = {
        **header,
        "size": args.size,
        "engine": args.engine,
        "w8a8": str(args.w8a8),
        "clips": [c.name for c in clips],
        "frames": sum(1 for _ in (clips[0] / "pha").iterdir()),
        "rows": rows,
    }
    write_report(args.out, report, render(report))


if __name__ == "__main__":
    main()
