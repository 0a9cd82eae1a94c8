"""The deployed int8 engine against every peer, in one run.

Speed: ONNX Runtime FP32 on the published graph (the denominator), OpenVINO FP32 and (where
the CPU has bf16) OpenVINO with the bf16 hint on the same graph, the graph that
`onnxruntime.quantization.quantize_static` makes of it (MinMax, QDQ, per-channel int8
weights, uint8 activations, calibrated on the 120 frames of the sample clip with the FP32
states carried; what a user would pick instead; cached) on ONNX Runtime and on OpenVINO, and
our artifact's exported int8 graph on both runtimes (W4A4 too with --w4a4), at 512x288 ds 1,
640x360 ds 1, 1280x720 ds 0.375 and 1920x1080 ds 0.25. OpenVINO engines compile static
shapes per size (`engine.openvino_engine`). The engines are interleaved over rounds (state
carried, sample-clip frames resized), so machine noise hits all alike; medians of the rounds,
ratios against FP32.

Quality: on the evaluation clips with exact ground truth (`calib.evalclips`), MAD etc. of FP32,
quantize_static, our int8 engine and the simulation it deploys, beside each other. Parity: our
engine against the simulation over the sample clip, and, for scale, how far the simulation
itself moves when every conv output gets float-rounding-sized noise (1e-6 relative).

    python benchmarks/engine.py [--artifact DIR] [--rounds 3] [--frames 30]
        [--w4a4 DIR] [--parity-artifacts DIR ...] [--skip-quality]

Past 400 lines on purpose: every engine of the run, their quality and parity and the report
are one measurement; the ratios mean something only because they come from one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ptq4vm_core.artifact import load_artifact, read_manifest
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.bench import bench_frames, run_benchmark
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.engine import Engine, EngineKind, load_engine
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.openvino_engine import OpenVinoEngine, cpu_has_bf16, openvino_version
from ptq4vm_core.engine.ort_engine import OrtEngine, default_threads
from ptq4vm_core.engine.rvm_graph import prepare
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.io.metrics import METRIC_NAMES
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.paths import cache_root
from ptq4vm_core.quant.model import quant_layers

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CASES = [("512x288", 1.0), ("640x360", 1.0), ("1280x720", 0.375), ("1920x1080", 0.25)]
DEFAULT_ARTIFACT = cache_root() / "bench" / "baselines" / "qdrop-w8a8-standard"
QS_MODEL = cache_root() / "bench" / "engine" / "rvm-quantize-static-minmax-qdq.onnx"
PAUSE_S = 0.5
LABELS = {
    "fp32": "ONNX Runtime FP32, published graph",
    "ov_fp32": "OpenVINO FP32 (f32 precision), static shapes",
    "ov_bf16": "OpenVINO, the FP32 graph with the bf16 precision hint",
    "qs_ort": "`quantize_static` (per-channel QDQ, MinMax) on ONNX Runtime",
    "qs_ov": "`quantize_static` on OpenVINO, static shapes",
    "ours_ort": "our artifact's int8 graph on ONNX Runtime",
    "ours_ov": "our artifact's int8 graph on OpenVINO, static shapes, OpenVINO's form",
    "ov_bf16_alpha": "OpenVINO bf16 asked for alpha only (what a stream asks)",
    "ours_ov_alpha": "ours on OpenVINO asked for alpha only (streams, /v1/matte)",
    "w4a4_ort": "a W4A4 artifact on ONNX Runtime",
    "w4a4_ov": "a W4A4 artifact on OpenVINO",
}
ZERO = np.zeros((1, 1, 1, 1), np.float32)


class AlphaOnly:
    """An engine called as streams call it: `alpha_only=True` (OpenVINO then compiles the
    shape without the foreground)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = f"{engine.name}-alpha"

    def infer(
        self, src: Any, state: Any, downsample_ratio: float, *, alpha_only: bool = True
    ) -> Any:
        return self.engine.infer(src, state, downsample_ratio, alpha_only=True)


class ClipReader(CalibrationDataReader):  # type: ignore[misc]
    """The sample clip's frames with the FP32 model's states, as quantize_static's feeds."""

    def __init__(self) -> None:
        fp32 = OrtEngine(weights_path())
        self.feeds: list[dict[str, NDArray[np.float32]]] = []
        state: Any = None
        for frame in iter_frames(sample_clip_path()):
            src = frames_to_batch([frame])
            states = state or (ZERO, ZERO, ZERO, ZERO)
            feed = {"src": src, "downsample_ratio": np.ones(1, np.float32)}
            feed.update({f"r{k}i": states[k - 1] for k in range(1, 5)})
            self.feeds.append(feed)
            state = fp32.infer(src, state, 1.0).state
        self._iter: Iterator[dict[str, NDArray[np.float32]]] = iter(self.feeds)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._iter, None)


def quantize_static_model() -> Path:
    """ORT's quantize_static of the published graph (at opset 17: per-channel QDQ needs >= 13)."""
    if QS_MODEL.is_file():
        return QS_MODEL
    QS_MODEL.parent.mkdir(parents=True, exist_ok=True)
    source = QS_MODEL.with_suffix(".fp32.onnx")
    onnx.save(prepare(onnx.load(str(weights_path()))), str(source))
    tmp = QS_MODEL.with_suffix(".tmp.onnx")
    quantize_static(
        str(source), str(tmp), ClipReader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    tmp.replace(QS_MODEL)
    source.unlink()
    return QS_MODEL


def speed(engines: dict[str, Engine], rounds: int, frames: int) -> list[dict[str, Any]]:
    clip = [f for _, f in zip(range(30), iter_frames(sample_clip_path()), strict=False)]
    rows = []
    for size, ratio in CASES:
        width, height = (int(v) for v in size.split("x"))
        data = bench_frames(clip, width, height, frames)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in engines}
        for _ in range(rounds):
            for key, engine in engines.items():
                # The previous engine's thread pool spins for a while after its last frame
                # (ONNX Runtime's intra-op threads, OpenVINO's workers) and would take cycles
                # from this one: let it go idle first, as it would with one engine per process.
                time.sleep(PAUSE_S)
                runs[key].append(run_benchmark(engine, data, ratio, warmup=3).as_dict())
        row: dict[str, Any] = {"size": size, "downsample_ratio": ratio}
        for key in engines:
            for stat in ("fps", "ms_p50", "ms_p99"):
                row[f"{key}_{stat}"] = statistics.median(float(r[stat]) for r in runs[key])
            row[f"{key}_fps_rounds"] = [round(float(r["fps"]), 2) for r in runs[key]]
            row[f"{key}_over_fp32"] = row[f"{key}_fps"] / row["fp32_fps"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def alpha_diffs(a: Engine, b: Engine, count: int = 120) -> NDArray[np.float64]:
    """Per frame mean and max |alpha_a - alpha_b| over the sample clip at ratio 1, [count, 2]."""
    state_a = state_b = None
    out = []
    for _, frame in zip(range(count), iter_frames(sample_clip_path()), strict=False):
        src = frames_to_batch([frame])
        ra, rb = a.infer(src, state_a, 1.0), b.infer(src, state_b, 1.0)
        state_a, state_b = ra.state, rb.state
        diff = np.abs(ra.pha - rb.pha)
        out.append((float(diff.mean()), float(diff.max())))
    return np.asarray(out)


def noisy_simulation(artifact: Path) -> TorchEngine:
    """The simulation with 1e-6 relative Gaussian noise on every conv output: the size of
    the difference another runtime's float summation order makes."""
    model = copy.deepcopy(load_artifact(artifact).model)
    generator = torch.Generator().manual_seed(0)

    def noise(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output * (1 + 1e-6 * torch.randn(output.shape, generator=generator))

    for layer in quant_layers(model).values():
        layer.register_forward_hook(noise)
    return TorchEngine(model, name="sim-noisy")


def parity(artifact: Path, kind: EngineKind) -> dict[str, Any]:
    deployed, sim = load_engine(str(artifact), kind), load_engine(str(artifact), "sim")
    d = alpha_diffs(deployed, sim)
    own = alpha_diffs(sim, noisy_simulation(artifact))
    return {
        "artifact": artifact.name,
        "bits": read_manifest(artifact).bits,
        "engine": deployed.name,
        "mean": float(d[:, 0].mean()),
        "max": float(d[:, 1].max()),
        "first20": float(d[:20, 0].mean()),
        "last20": float(d[-20:, 0].mean()),
        "sim_noise_mean": float(own[:, 0].mean()),
    }


def quality(engines: dict[str, Engine]) -> dict[str, dict[str, float]]:
    clips = build_eval_clips(engines["fp32"], sample_clip_path(), cache_root() / "evalclips")
    return {k: evaluate_clips(e, clips, reference=engines["fp32"]) for k, e in engines.items()}


def write(
    meta: dict[str, Any], rows: list[dict[str, Any]], extra: dict[str, Any], name: str = "engine"
) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, **extra}, indent=2))
    keys = meta["engines"]
    lines = [
        "# Deployed int8 engine vs every peer, in one run",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}, "
        f"{meta['threads']} threads, onnxruntime {meta['onnxruntime']}, openvino "
        f"{meta['openvino']}). Ours: artifact `{meta['artifact']}` ({meta['bits']}); deployed "
        f"engine `{meta['engine']}`. Medians of {meta['rounds']} interleaved rounds of "
        f"{meta['frames']} frames, recurrent state carried; ratios are fps against ORT FP32 "
        f"measured in the same rounds. Load average at the start: {meta['load']}. "
        f"{meta['note']}",
        "",
        "Engines: " + "; ".join(f"`{k}` = {LABELS[k]}" for k in keys) + ".",
        "",
        "| size | ds | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for r in rows:
        speeds = [
            f"{r[f'{k}_ms_p50']:.1f} ms ({r[f'{k}_over_fp32']:.2f}x)" if f"{k}_fps" in r else "-"
            for k in keys
        ]
        lines.append(f"| {r['size']} | {r['downsample_ratio']} | " + " | ".join(speeds) + " |")
    lines += [
        "",
        "Cells: median ms per frame (p50) and fps over ORT FP32. Ours (the deployed `auto`: "
        "OpenVINO) against the peers:",
        "",
        "| size | ds | ours / ORT FP32 | ours / OpenVINO bf16 | ours / quantize_static (best "
        "runtime) |",
        "|---|---|---|---|---|",
    ]
    # `auto` runs OpenVINO where it is installed (the deployed engine here).
    lines += _ratio_rows(rows, "ours_ov", "ov_bf16")
    if any("ours_ov_alpha_fps" in r for r in rows):
        lines += [
            "",
            "As a stream asks (alpha only; the FP32 denominator and `quantize_static` compute "
            "the foreground too, OpenVINO bf16 is asked for alpha only like ours):",
            "",
            "| size | ds | ours alpha / ORT FP32 | ours alpha / OpenVINO bf16 alpha | "
            "ours alpha / quantize_static (best runtime) |",
            "|---|---|---|---|---|",
        ]
        lines += _ratio_rows(rows, "ours_ov_alpha", "ov_bf16_alpha")
    lines += ["", f"![fps]({name}.png)", ""]
    if "quality" in extra:
        lines += [
            "## Quality on the evaluation clips",
            "",
            "MAD and MSE x1e3, Grad and Conn /1e3, dtSSD x1e2; MAD vs FP32 = mean |alpha - FP32 "
            "alpha| x1e3; mean over the clips built from the sample clip (`calib.evalclips`).",
            "",
            "| model | " + " | ".join(METRIC_NAMES) + " | MAD vs FP32 | MAD / FP32 MAD |",
            "|---" * (len(METRIC_NAMES) + 3) + "|",
        ]
        fp32_mad = extra["quality"]["fp32"]["MAD"]
        for key, m in extra["quality"].items():
            cells = " | ".join(f"{m[k]:.3f}" for k in (*METRIC_NAMES, "MAD_vs_fp32"))
            lines.append(f"| {key} | {cells} | {m['MAD'] / fp32_mad:.3f} |")
        lines.append("")
    if extra.get("parity"):
        lines += [
            "## Parity with the simulation",
            "",
            "Each of our engines against the PyTorch simulation of the same artifact over the "
            "120 frames of the sample clip at ratio 1, state carried (|alpha diff|, x255 = alpha "
            "levels). `sim vs noisy sim`: the simulation against itself with 1e-6 relative noise "
            "on every conv output, i.e. how much float summation order alone moves this model.",
            "",
            "| artifact | bits | engine | mean x255 | max | first 20 x255 | last 20 x255 "
            "| sim vs noisy sim x255 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in extra["parity"]:
            lines.append(
                f"| {p['artifact']} | {p['bits']} | {p['engine']} | {255 * p['mean']:.2f} | "
                f"{p['max']:.3f} | {255 * p['first20']:.2f} | {255 * p['last20']:.2f} | "
                f"{255 * p['sim_noise_mean']:.2f} |"
            )
        lines.append("")
    (OUT / f"{name}.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))]
        ys = [r.get(f"{key}_over_fp32", 0.0) for r in rows]
        bars = ax.bar(xs, ys, width, label=key)
        ax.bar_label(bars, [f"{y:.2f}" for y in ys], fontsize=6)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(rows)), [f"{r['size']}\nds {r['downsample_ratio']}" for r in rows])
    ax.set_ylabel("fps / ORT FP32 (same run)")
    ax.set_title(f"RVM on this CPU ({meta['threads']} threads): speed over ORT FP32")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=120)
    print(f"wrote {OUT / f'{name}.md'}")


def _ratio_rows(rows: list[dict[str, Any]], ours_key: str, bf16_key: str) -> list[str]:
    """Per size: `ours_key`'s fps over ORT FP32, over `bf16_key` and over the faster
    `quantize_static` runtime, as table rows."""
    lines = []
    for r in rows:
        ours = r[f"{ours_key}_fps"]
        bf16 = r.get(f"{bf16_key}_fps")
        qs = max(r.get("qs_ort_fps", 0.0), r.get("qs_ov_fps", 0.0))
        lines.append(
            f"| {r['size']} | {r['downsample_ratio']} | {ours / r['fp32_fps']:.2f}x | "
            + (f"{ours / bf16:.2f}x" if bf16 else "-")
            + f" | {ours / qs:.2f}x |"
        )
    return lines


def peers(artifact: Path, w4a4: Path | None) -> dict[str, Engine]:
    """Every engine of the run, ORT FP32 first (the ratios' denominator)."""
    weights = weights_path()
    both = {True: weights, False: weights}
    qs = quantize_static_model()
    engines: dict[str, Engine] = {
        "fp32": OrtEngine(weights, name="ort-fp32"),
        "ov_fp32": OpenVinoEngine(both, name="openvino-fp32"),
    }
    if cpu_has_bf16():
        engines["ov_bf16"] = OpenVinoEngine(both, name="openvino-bf16", precision="bf16")
    engines["qs_ort"] = OrtEngine(qs, name="ort-quantize-static")
    engines["qs_ov"] = OpenVinoEngine({True: qs, False: qs}, name="openvino-quantize-static")
    engines["ours_ort"] = load_engine(str(artifact), EngineKind.ORT)
    engines["ours_ov"] = load_engine(str(artifact), EngineKind.OPENVINO)
    if "ov_bf16" in engines:
        engines["ov_bf16_alpha"] = AlphaOnly(engines["ov_bf16"])
    engines["ours_ov_alpha"] = AlphaOnly(engines["ours_ov"])
    if w4a4 is not None:
        engines["w4a4_ort"] = load_engine(str(w4a4), EngineKind.ORT)
        engines["w4a4_ov"] = load_engine(str(w4a4), EngineKind.OPENVINO)
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--w4a4", type=Path, default=None, help="a W4A4 artifact, for the record")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument(
        "--parity-artifacts",
        type=Path,
        nargs="*",
        default=None,
        help="artifacts to check against their simulation (default: --artifact and --w4a4)",
    )
    parser.add_argument("--skip-quality", action="store_true", help="speed only")
    parser.add_argument("--note", default="", help="a remark for the report (e.g. machine load)")
    parser.add_argument("--out", default="engine", help="report name under docs/benchmarks")
    args = parser.parse_args()  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    started = time.monotonic()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    engines = peers(args.artifact, args.w4a4)
    deployed = load_engine(str(args.artifact))
    rows = speed(engines, args.rounds, args.frames)
    extra: dict[str, Any] = {}
    if not args.skip_quality:
        # The simulation's speed does not matter here; one PyTorch thread keeps it from
        # fighting the runtimes' spinning pools for the two cores.
        torch.set_num_threads(1)
        names = ("fp32", "ov_bf16", "qs_ort", "ours_ort", "ours_ov")
        judged = {k: engines[k] for k in names if k in engines}
        judged["ours (sim)"] = load_engine(str(args.artifact), "sim")
        extra["quality"] = quality(judged)
        checked = args.parity_artifacts or [a for a in (args.artifact, args.w4a4) if a]
        extra["parity"] = [
            parity(a, kind) for a in checked for kind in (EngineKind.ORT, EngineKind.OPENVINO)
        ]
    command = f"python benchmarks/engine.py --rounds {args.rounds} --frames {args.frames}"
    if args.artifact != DEFAULT_ARTIFACT:
        command += f" --artifact {args.artifact}"
    if args.w4a4 is not None:
        command += f" --w4a4 {args.w4a4}"
    if args.parity_artifacts:
        command += " --parity-artifacts " + " ".join(str(a) for a in args.parity_artifacts)
    if args.skip_quality:
        command += " --skip-quality"
    if args.out != "engine":
        command += f" --out {args.out}"
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "threads": default_threads(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "openvino": openvino_version(),
        "artifact": args.artifact.name,
        "bits": read_manifest(args.artifact).bits,
        "engine": deployed.name,
        "engines": list(engines),
        "rounds": args.rounds,
        "frames": args.frames,
        "command": command,
        "note": args.note,
        "load": load,
        "seconds": round(time.monotonic() - started),
    }
    write(meta, rows, extra, args.out)


if __name__ == "__main__":
    main()
