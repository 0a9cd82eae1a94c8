"""The deployed int8 engine against every peer, in one run, on any CPU.

Speed: ONNX Runtime FP32 on the published graph (the denominator), OpenVINO FP32 and (where
the CPU has bf16) OpenVINO with the bf16 hint on the same graph, the graph that
`onnxruntime.quantization.quantize_static` makes of it (MinMax, QDQ, per-channel int8
weights, uint8 activations, calibrated on the 120 frames of the sample clip with the FP32
states carried; what a user would pick instead; cached) on ONNX Runtime and on OpenVINO, and
our artifacts' exported int8 graphs on both runtimes: the W8A8 artifact (calibrated for VNNI,
`--artifact`) and the saturation-safe one (`--int8-target avx2`, `--avx2`) side by side, so a
fleet of mixed CPUs can choose one knowing what the other costs (W4A4 too with --w4a4), and
MediaPipe's selfie segmentation, the speed floor of the field (`--mediapipe`; its own
environment, `make bench-mediapipe`), at 512x288 ds 1, 640x360 ds 1, 1280x720 ds 0.375 and
1920x1080 ds 0.25. A row this CPU cannot run exactly (int8 kernels that saturate here: 8-bit
weights on x86 without VNNI) is timed and marked. The report names the CPU model and class
(`engine.cpu.cpu_class`; on a VNNI CPU, `ONEDNN_MAX_CPU_ISA=AVX2` makes OpenVINO run its AVX2
kernels, rows and denominator alike, and the class says so) and is written per class:
docs/benchmarks/engine-<class>.md. OpenVINO engines compile static
shapes per size (`engine.openvino_engine`). The engines are interleaved over rounds (state
carried, sample-clip frames resized), so machine noise hits all alike; medians of the rounds,
ratios against FP32.

Quality: on the evaluation clips with exact ground truth (`calib.evalclips`), MAD etc. of FP32,
quantize_static, our int8 engine and the simulation it deploys, beside each other. Parity: our
engine against the simulation over the sample clip, and, for scale, how far the simulation
itself moves when every conv output gets float-rounding-sized noise (1e-6 relative).

    python benchmarks/engine.py [--artifact DIR] [--avx2 DIR] [--mediapipe] [--rounds 3]
        [--frames 30] [--w4a4 DIR] [--parity-artifacts DIR ...] [--skip-quality]

Past 400 lines on purpose: every engine of the run, their quality and parity and the report
are one measurement; the ratios mean something only because they come from one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
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
from ptq4vm_core.artifact.saturation import PAIR_BOUND, check_saturation, pair_sums
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.bench import bench_frames, run_benchmark
from ptq4vm_core.calib.evalclips import build_eval_clips
from ptq4vm_core.engine import Engine, EngineKind, load_engine
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.engine.cpu import cpu_class, cpu_model, int8_dot_exact
from ptq4vm_core.engine.export.rvm_graph import normalized
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.openvino_engine import (
    OpenVinoEngine,
    OpenVinoUnavailableError,
    cpu_has_bf16,
    openvino_version,
)
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.runtime import default_threads
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.evaluate import evaluate_clips
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.paths import cache_root
from ptq4vm_core.quant.model import quant_layers

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_report import write
from mediapipe_client import MODELS as MEDIAPIPE_MODELS
from mediapipe_client import MediaPipeEngine, mediapipe_available

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
    "ours_ort": "our W8A8 artifact's int8 graph on ONNX Runtime (its exact u8u8 kernels where "
    "u8 x s8 saturates)",
    "ours_ov": "our W8A8 artifact's int8 graph on OpenVINO, static shapes, OpenVINO's form",
    "ov_bf16_alpha": "OpenVINO bf16 asked for alpha only (what a stream asks)",
    "ours_ov_alpha": "ours W8A8 on OpenVINO asked for alpha only (streams, /v1/matte)",
    "ours_ov_bf16": "ours W8A8 on OpenVINO with the bf16 precision hint (the int8 graph's float "
    "parts on bf16 units)",
    "ours_ov_bf16_alpha": "the same asked for alpha only",
    "avx2_ort": "our AVX2-target artifact (7-bit dense weights) on ONNX Runtime",
    "avx2_ov": "our AVX2-target artifact on OpenVINO, static shapes",
    "avx2_ov_alpha": "the AVX2 target on OpenVINO asked for alpha only",
    "mediapipe": "MediaPipe selfie segmentation (landscape model, its own process; timed inside "
    "it)",
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
    onnx.save(normalized(onnx.load(str(weights_path()))), str(source))
    tmp = QS_MODEL.with_suffix(".tmp.onnx")
    quantize_static(
        str(source), str(tmp), ClipReader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    tmp.replace(QS_MODEL)
    source.unlink()
    return QS_MODEL


def speed(
    engines: dict[str, Engine],
    rounds: int,
    frames: int,
    cases: list[tuple[str, float]] | None = None,
) -> list[dict[str, Any]]:
    clip = [f for _, f in zip(range(30), iter_frames(sample_clip_path()), strict=False)]
    rows = []
    for size, ratio in cases or CASES:
        width, height = (int(v) for v in size.split("x"))
        data = bench_frames(clip, width, height, frames)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in engines}
        for _ in range(rounds):
            for key, engine in engines.items():
                # The previous engine's thread pool spins for a while after its last frame
                # (ONNX Runtime's intra-op threads, OpenVINO's workers) and would take cycles
                # from this one: let it go idle first, as it would with one engine per process.
                time.sleep(PAUSE_S)
                if isinstance(engine, MediaPipeEngine):
                    runs[key].append(timed(engine.bench(data)))
                    continue
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


def timed(ms: list[float]) -> dict[str, float]:
    """`run_benchmark`'s figures from per-frame milliseconds timed elsewhere."""
    values = np.asarray(ms)
    return {
        "fps": float(1e3 * len(values) / values.sum()),
        "ms_p50": float(np.percentile(values, 50)),
        "ms_p99": float(np.percentile(values, 99)),
    }


def alpha_diffs(
    a: Engine, b: Engine, count: int = 120, *, negate: bool = False
) -> NDArray[np.float64]:
    """Per frame mean and max |alpha_a - alpha_b| over the sample clip at ratio 1, [count, 2];
    `negate`: its frames negated (bright pixels: the largest u8 inputs an int8 conv sees)."""
    state_a = state_b = None
    out = []
    for _, frame in zip(range(count), iter_frames(sample_clip_path()), strict=False):
        src = frames_to_batch([255 - frame if negate else frame])
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


def parity(artifact: Path, kind: EngineKind, bf16: bool = False) -> dict[str, Any]:
    """The engine `kind` runs `artifact` on here (`bf16`: OpenVINO's, with the bf16 hint)
    against its simulation, over the sample clip and over its negated frames; where this CPU
    refuses the engine, the reason."""
    manifest = read_manifest(artifact)
    row: dict[str, Any] = {"artifact": artifact.name, "bits": manifest.bits,
                           "target": manifest.int8_target.value}  # fmt: skip
    try:
        deployed = load_engine(str(artifact), kind, int8_precision="bf16" if bf16 else "f32")
    except OpenVinoUnavailableError as exc:
        return row | {"engine": f"{kind.value}: refused", "refused": str(exc)}
    sim = load_engine(str(artifact), "sim")
    d = alpha_diffs(deployed, sim)
    neg = alpha_diffs(deployed, sim, negate=True)
    own = alpha_diffs(sim, noisy_simulation(artifact))
    return row | {
        "engine": deployed.name,
        "mean": float(d[:, 0].mean()),
        "max": float(d[:, 1].max()),
        "worst_frame": float(d[:, 0].max()),
        "first20": float(d[:20, 0].mean()),
        "last20": float(d[-20:, 0].mean()),
        "negated_mean": float(neg[:, 0].mean()),
        "negated_worst_frame": float(neg[:, 0].max()),
        "sim_noise_mean": float(own[:, 0].mean()),
    }


def quality(engines: dict[str, Engine]) -> dict[str, dict[str, float]]:
    clips = build_eval_clips(engines["fp32"], sample_clip_path(), cache_root() / "evalclips")
    return {k: evaluate_clips(e, clips, reference=engines["fp32"]) for k, e in engines.items()}


def graph_pairs_safe(model: Path) -> bool:
    """Whether every dense conv weight of an int8 ONNX graph (int8 initializers [O, I, kH, kW]
    with I > 1) keeps its pairs within int16 under u8 inputs (`artifact.saturation`)."""
    graph = onnx.load(str(model))
    for init in graph.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4 and init.dims[1] > 1:
            q = torch.from_numpy(onnx.numpy_helper.to_array(init).astype(np.int32))
            if int(pair_sums(q).max()) > PAIR_BOUND:
                return False
    return True


def int8_openvino(artifact: Path, key: str, marks: dict[str, str]) -> Engine:
    """The artifact on OpenVINO, its float parts at f32; where this CPU refuses it (8-bit
    weights, no VNNI), the same compiled graph built directly, timed, and marked as not exact
    here."""
    try:
        return load_engine(str(artifact), EngineKind.OPENVINO, int8_precision="f32")
    except OpenVinoUnavailableError:
        graphs = cached_export(artifact)
        marks[key] = SATURATES
        name = f"openvino-int8-{graphs.report['bits']}-saturating"
        return OpenVinoEngine(
            {True: graphs.openvino_full_resolution, False: graphs.openvino_general}, name=name
        )


def int8_bf16(artifact: Path) -> Engine:
    """The artifact's int8 graph on OpenVINO with the bf16 precision hint: the integer convs
    as before, what is float between them (hard-swish, SE gates, the GRUs, resizes, the
    guided-filter tail) on the CPU's bf16 units."""
    return load_engine(str(artifact), EngineKind.OPENVINO, int8_precision="bf16")


SATURATES = "int8 kernels that saturate on this CPU (8-bit weights, x86 without VNNI)"


def peers(
    artifact: Path, avx2: Path | None, w4a4: Path | None, mediapipe: bool
) -> tuple[dict[str, Engine], dict[str, str]]:
    """Every engine of the run, ORT FP32 first (the ratios' denominator), and the rows that
    are not exact on this CPU with the reason (timed all the same)."""
    weights = weights_path()
    both = {True: weights, False: weights}
    qs = quantize_static_model()
    marks: dict[str, str] = {}
    engines: dict[str, Engine] = {
        "fp32": OrtEngine(weights, name="ort-fp32"),
        "ov_fp32": OpenVinoEngine(both, name="openvino-fp32"),
    }
    if cpu_has_bf16():
        engines["ov_bf16"] = OpenVinoEngine(both, name="openvino-bf16", precision="bf16")
    engines["qs_ort"] = OrtEngine(qs, name="ort-quantize-static")
    engines["qs_ov"] = OpenVinoEngine({True: qs, False: qs}, name="openvino-quantize-static")
    if not int8_dot_exact() and not graph_pairs_safe(qs):
        marks["qs_ort"] = marks["qs_ov"] = SATURATES
    engines["ours_ort"] = load_engine(str(artifact), EngineKind.ORT)
    engines["ours_ov"] = int8_openvino(artifact, "ours_ov", marks)
    if avx2 is not None:
        if not check_saturation(avx2).safe:
            raise SystemExit(f"--avx2 {avx2} is not saturation-safe: calibrate it with "
                             "--int8-target avx2")  # fmt: skip
        engines["avx2_ort"] = load_engine(str(avx2), EngineKind.ORT)
        engines["avx2_ov"] = load_engine(str(avx2), EngineKind.OPENVINO, int8_precision="f32")
    if "ov_bf16" in engines:
        engines["ov_bf16_alpha"] = AlphaOnly(engines["ov_bf16"])
    engines["ours_ov_alpha"] = AlphaOnly(engines["ours_ov"])
    if "ov_bf16" in engines and "ours_ov" not in marks:
        engines["ours_ov_bf16"] = int8_bf16(artifact)
        engines["ours_ov_bf16_alpha"] = AlphaOnly(engines["ours_ov_bf16"])
    if "ours_ov" in marks:
        marks["ours_ov_alpha"] = SATURATES
    if avx2 is not None:
        engines["avx2_ov_alpha"] = AlphaOnly(engines["avx2_ov"])
    if w4a4 is not None:
        engines["w4a4_ort"] = load_engine(str(w4a4), EngineKind.ORT)
        engines["w4a4_ov"] = int8_openvino(w4a4, "w4a4_ov", marks)
    if mediapipe:
        missing = mediapipe_available()
        if missing is not None:
            raise SystemExit(f"--mediapipe: {missing}")
        engines["mediapipe"] = MediaPipeEngine()
    return engines, marks


def report_name(out: str | None) -> str:
    """engine-<class>: one report per CPU class (vnni, avx2; avx2-capped for a VNNI CPU whose
    OpenVINO is capped to AVX2)."""
    if out:
        return out
    if int8_dot_exact():
        return "engine-vnni"
    return "engine-avx2-capped" if "capped" in cpu_class() else "engine-avx2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--avx2", type=Path, default=None, help="an --int8-target avx2 artifact")
    parser.add_argument("--w4a4", type=Path, default=None, help="a W4A4 artifact, for the record")
    parser.add_argument("--mediapipe", action="store_true", help="MediaPipe as a peer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument(
        "--parity-artifacts",
        type=Path,
        nargs="*",
        default=None,
        help="artifacts to check against their simulation (default: --artifact, --avx2, --w4a4)",
    )
    parser.add_argument("--skip-quality", action="store_true", help="speed only")
    parser.add_argument(
        "--cases",
        nargs="*",
        default=None,
        help="sizes to time as WxH:RATIO (default: the four of CASES), e.g. 1280x720:0.375",
    )
    parser.add_argument("--note", default="", help="a remark for the report (e.g. machine load)")
    parser.add_argument("--out", default=None, help="report name (default: engine-<cpu class>)")
    args = parser.parse_args()  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    started = time.monotonic()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    engines, marks = peers(args.artifact, args.avx2, args.w4a4, args.mediapipe)
    deployed = {a.name: load_engine(str(a)).name for a in (args.artifact, args.avx2) if a}
    cases = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cases or []] or None
    rows = speed(engines, args.rounds, args.frames, cases)
    name = report_name(args.out)
    command = f"python benchmarks/engine.py --rounds {args.rounds} --frames {args.frames}"
    if args.artifact != DEFAULT_ARTIFACT:
        command += f" --artifact {args.artifact}"
    for flag, value in (("--avx2", args.avx2), ("--w4a4", args.w4a4)):
        if value is not None:
            command += f" {flag} {value}"
    if args.mediapipe:
        command += " --mediapipe"
    if args.parity_artifacts:
        command += " --parity-artifacts " + " ".join(str(a) for a in args.parity_artifacts)
    if args.skip_quality:
        command += " --skip-quality"
    if args.cases:
        command += " --cases " + " ".join(args.cases)
    if args.out:
        command += f" --out {args.out}"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        command = f"ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']} {command}"
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "cpu": cpu_model(),
        "cpu_class": cpu_class(),
        "onednn_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": default_threads(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "openvino": openvino_version(),
        "mediapipe": engines["mediapipe"].version if "mediapipe" in engines else None,  # type: ignore[attr-defined]
        "mediapipe_model": MEDIAPIPE_MODELS[1] if "mediapipe" in engines else None,
        "artifact": args.artifact.name,
        "avx2": args.avx2.name if args.avx2 else None,
        "bits": read_manifest(args.artifact).bits,
        "deployed": ", ".join(f"`{a}` on {e}" for a, e in deployed.items()),
        "engines": list(engines),
        "labels": {k: LABELS[k] for k in engines},
        "marks": marks,
        "rounds": args.rounds,
        "frames": args.frames,
        "command": command,
        "note": args.note,
        "load": load,
        "seconds": round(time.monotonic() - started),
    }
    # The speed report first: quality and parity take as long again, and a run cut short
    # keeps what it measured.
    write(meta, rows, {}, name)
    extra: dict[str, Any] = {}
    if not args.skip_quality:
        # The simulation's speed does not matter here; one PyTorch thread keeps it from
        # fighting the runtimes' spinning pools for the two cores.
        torch.set_num_threads(1)
        names = (
            "fp32",
            "ov_bf16",
            "qs_ort",
            "ours_ort",
            "ours_ov",
            "ours_ov_bf16",
            "avx2_ov",
            "mediapipe",
        )
        judged = {k: engines[k] for k in names if k in engines}
        judged["ours (sim)"] = load_engine(str(args.artifact), "sim")
        if args.avx2 is not None:
            judged["avx2 (sim)"] = load_engine(str(args.avx2), "sim")
        extra["quality"] = quality(judged)
        write(meta, rows, extra, name)
        checked = args.parity_artifacts or [a for a in (args.avx2, args.artifact, args.w4a4) if a]
        extra["parity"] = []
        for artifact in checked:
            for kind in (EngineKind.OPENVINO, EngineKind.ORT):
                extra["parity"].append(parity(artifact, kind))
                write(meta, rows, extra, name)
            if "ours_ov_bf16" in engines:
                extra["parity"].append(parity(artifact, EngineKind.OPENVINO, bf16=True))
                write(meta, rows, extra, name)
    for engine in engines.values():
        if isinstance(engine, MediaPipeEngine):
            engine.close()
    if extra:
        meta["seconds"] = round(time.monotonic() - started)
        write(meta, rows, extra, name)


if __name__ == "__main__":
    main()
