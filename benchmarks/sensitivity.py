"""Where a quantized artifact's error comes from: MAD against FP32 with quantizers switched off.

Runs the artifact's PyTorch simulation over the first --frames frames of an evaluation clip
(state carried) and reports the mean |alpha - FP32 alpha| x1e3: with everything quantized,
with all weight quantizers or all activation quantizers in float, and then for each quantizer
alone in float, the --top largest gains. Answers "which layers should a method (or a policy)
spend its effort on".

    python benchmarks/sensitivity.py ~/.cache/ptq4vm/bench/baselines/qdrop-w8a8-standard \
        --out docs/benchmarks/sensitivity-qdrop-w8a8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ptq4vm_core.artifact import load_artifact
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.engine import load_engine
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.model import MattingNetwork, load_rvm_from_onnx
from ptq4vm_core.paths import cache_root
from ptq4vm_core.pipeline import resolve_downsample_ratio
from ptq4vm_core.quant.mode import QuantMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import write_report


def alphas(model: MattingNetwork, frames: list[torch.Tensor], ratio: float) -> torch.Tensor:
    state, out = None, []
    with torch.inference_mode():
        for x in frames:
            result = model(x, state, ratio)
            state = result.state
            out.append(result.pha)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--clip", type=Path, help="a clip directory with com/ (default: the "
                        "first evaluation clip built from the sample clip)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    clip = (
        args.clip
        or build_eval_clips(load_engine("fp32"), sample_clip_path(), cache_root() / "evalclips")[0]
    )
    frames = [
        torch.from_numpy(f.copy()).permute(2, 0, 1)[None].float() / 255
        for f, _ in zip(iter_frames(clip / "com"), range(args.frames), strict=False)
    ]
    ratio = resolve_downsample_ratio(None, frames[0].shape[-1], frames[0].shape[-2])
    reference = alphas(load_rvm_from_onnx(weights_path()).eval(), frames, ratio)
    model = load_artifact(args.artifact).model.eval()
    quantizers = [(n, m) for n, m in model.named_modules() if n.endswith("_quantizer")]

    def mad(in_float: Callable[[str], bool]) -> float:
        saved: dict[str, QuantMode] = {}
        for name, q in quantizers:
            if in_float(name):
                saved[name], q.mode = q.mode, QuantMode.FP
        try:
            return float((alphas(model, frames, ratio) - reference).abs().mean()) * 1e3
        finally:
            for name, q in quantizers:
                if name in saved:
                    q.mode = saved[name]

    def is_weight(name: str) -> bool:
        return name.endswith("weight_quantizer")

    base = mad(lambda n: False)
    groups = {
        "all quantized": base,
        "weights in float": mad(is_weight),
        "activations in float": mad(lambda n: not is_weight(n)),
    }
    for key, value in groups.items():
        print(f"{key}: {value:.3f}", flush=True)
    gains: list[tuple[float, str]] = []
    for name, _ in quantizers:
        gains.append((base - mad(name.__eq__), name))
        print(f"{name}: gain {gains[-1][0]:.3f}", flush=True)
    gains.sort(reverse=True)
    report = {
        "artifact": str(args.artifact),
        "clip": clip.name,
        "frames": len(frames),
        "ratio": ratio,
        "groups": groups,
        "top": [{"quantizer": n, "gain": g} for g, n in gains[: args.top]],
    }
    if args.out:
        write(args.out, report)


def write(out: Path, report: dict[str, object]) -> None:
    """The report and its markdown."""
    groups = report["groups"]
    top = report["top"]
    assert isinstance(groups, dict)
    assert isinstance(top, list)
    lines = [
        f"# Error sources of `{Path(str(report['artifact'])).name}`",
        "",
        f"`python benchmarks/sensitivity.py {report['artifact']}`: MAD against FP32 (x1e3) over "
        f"{report['frames']} frames of the `{report['clip']}` evaluation clip, state carried.",
        "",
        "| quantizers | MAD vs FP32 |",
        "|---|---|",
        *(f"| {k} | {v:.3f} |" for k, v in groups.items()),
        "",
        "Largest gains from one quantizer alone in float:",
        "",
        "| quantizer | MAD gain |",
        "|---|---|",
        *(f"| `{t['quantizer']}` | {t['gain']:.3f} |" for t in top),
    ]
    write_report(out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
