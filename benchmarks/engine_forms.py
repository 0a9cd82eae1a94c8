"""Which graph form each runtime runs fastest: the exporter's rewrites one by one, measured.

Every form computes the same quantized function (`export.GraphForm`); this measures, for one
artifact, ONNX Runtime's form and OpenVINO's form on both runtimes, and OpenVINO's form with
each of its rewrites switched off, at 512x288 ds 1 and 1280x720 ds 0.375. The figure is CPU
time per frame with one inference thread (process CPU time over the frames, medians of
interleaved rounds): unlike wall time on a shared 2-core machine it hardly moves with what
else runs, so the forms can be compared on a busy day; `benchmarks/engine.py` gives the
wall-time ratios with two threads. ORT FP32 on the published graph is the denominator, and
each form's alpha is compared with ONNX Runtime's form on ONNX Runtime (mean |diff| x255).

    python benchmarks/engine_forms.py [--artifact DIR] [--rounds 5] [--frames 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ptq4vm_core.artifact.verify import verify
from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.export.build import (
    OPENVINO_FORM,
    ORT_FORM,
    GraphForm,
    build_form,
)
from ptq4vm_core.engine.openvino_engine import OpenVinoEngine, openvino_version
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.paths import cache_root

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CASES = [("512x288", 1.0), ("1280x720", 0.375)]
DEFAULT_ARTIFACT = cache_root() / "bench" / "baselines" / "qdrop-w8a8-standard"


def variants() -> dict[str, GraphForm]:
    """OpenVINO's form, then that form with each rewrite off, then ONNX Runtime's form."""
    out = {"openvino form": OPENVINO_FORM}
    for rewrite in ("split_concat_convs", "hard_sigmoid_as_clip", "merged_upsampling"):
        out[f"  without {rewrite}"] = dataclasses.replace(
            OPENVINO_FORM, name=f"-{rewrite}", **{rewrite: False}
        )
    out["  with merge_box_filters"] = dataclasses.replace(
        OPENVINO_FORM, name="+boxes", merge_box_filters=True
    )
    out["ort form"] = ORT_FORM
    return out


def cpu_ms(
    engines: dict[str, Engine], ratio: float, size: str, rounds: int, frames: int
) -> dict[str, tuple[float, Any]]:
    width, height = (int(v) for v in size.split("x"))
    src = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    state: dict[str, Any] = dict.fromkeys(engines)
    alpha = {}
    for key, engine in engines.items():
        for _ in range(3):
            out = engine.infer(src, state[key], ratio)
            state[key] = out.state
        alpha[key] = out.pha
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for key, engine in engines.items():
            start = time.process_time()
            for _ in range(frames):
                state[key] = engine.infer(src, state[key], ratio).state
            times[key].append((time.process_time() - start) / frames * 1e3)
    return {k: (statistics.median(v), alpha[k]) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--out", default="engine-forms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    verified = verify(args.artifact)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs: dict[str, tuple[Path, Path]] = {}
        for label, form in variants().items():
            general, full = build_form(verified, form)
            paths = (Path(tmp) / f"{form.name}.onnx", Path(tmp) / f"{form.name}-ds1.onnx")
            onnx.save(general, str(paths[0]))
            onnx.save(full, str(paths[1]))
            graphs[label] = paths
        cache = Path(tmp) / "ovcache"
        for size, ratio in CASES:
            pick = 1 if ratio == 1.0 else 0
            engines: dict[str, Engine] = {"ORT FP32": OrtEngine(weights_path(), threads=1)}
            for label, paths in graphs.items():
                graph = {True: paths[pick], False: paths[pick]}
                engines[f"OpenVINO, {label.strip()}"] = OpenVinoEngine(
                    graph, name=label, threads=1, cache_dir=cache
                )
            for label in ("openvino form", "ort form"):
                engines[f"ORT, {label}"] = OrtEngine(graphs[label][pick], threads=1)
            measured = cpu_ms(engines, ratio, size, args.rounds, args.frames)
            fp32 = measured["ORT FP32"][0]
            reference = measured["ORT, ort form"][1]
            for key, (ms, pha) in measured.items():
                rows.append(
                    {
                        "size": size,
                        "downsample_ratio": ratio,
                        "engine": key,
                        "cpu_ms": round(ms, 2),
                        "over_fp32": round(fp32 / ms, 3),
                        "alpha_vs_ort_form_x255": round(
                            float(np.abs(pha - reference).mean()) * 255, 3
                        ),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": args.artifact.name,
        "bits": verified.manifest.bits,
        "openvino": openvino_version(),
        "load": load,
        "command": f"python benchmarks/engine_forms.py --artifact {args.artifact} "
        f"--rounds {args.rounds} --frames {args.frames}",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Graph forms: which rewrites each runtime runs fastest",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} (artifact `{meta['artifact']}`, "
        f"{meta['bits']}; openvino {meta['openvino']}; load average at the start {load}). CPU "
        "time per frame with one inference thread, medians of interleaved rounds; `x FP32` = "
        "ORT FP32 CPU time / this one; `alpha diff` = mean |alpha - ONNX Runtime's form on "
        "ONNX Runtime| x255 on the benchmark frame (random pixels, state carried).",
        "",
        "| size | ds | engine, graph form | CPU ms | x FP32 | alpha diff x255 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['downsample_ratio']} | {r['engine']} | {r['cpu_ms']:.1f} | "
            f"{r['over_fp32']:.2f}x | {r['alpha_vs_ort_form_x255']:.3f} |"
        )
    (OUT / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / args.out}.md")


if __name__ == "__main__":
    main()
