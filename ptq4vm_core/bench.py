"""Engine throughput and latency at a given frame size, state carried as in a real stream."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.frames import frames_to_batch


@dataclass(frozen=True)
class BenchResult:
    engine: str
    size: str  # "WxH"
    downsample_ratio: float
    frames: int
    fps: float
    ms_mean: float
    ms_p50: float
    ms_p90: float
    ms_p99: float
    ms_max: float
    threads: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_frames(
    source: list[NDArray[np.uint8]], width: int, height: int, count: int
) -> list[NDArray[np.uint8]]:
    """`count` frames of `width`x`height`, cycling through `source` (real content matters for
    nothing but realism here; sizes do)."""
    if not source:
        rng = np.random.default_rng(0)
        source = [rng.integers(0, 256, (height, width, 3)).astype(np.uint8)]
    resized = [
        np.asarray(cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR), np.uint8)
        for f in source
    ]
    return [resized[i % len(resized)] for i in range(count)]


def run_benchmark(
    engine: Engine,
    frames: list[NDArray[np.uint8]],
    downsample_ratio: float,
    *,
    warmup: int = 5,
    threads: int | None = None,
    on_frame: Callable[[int], None] | None = None,
    alpha_only: bool = False,
) -> BenchResult:
    """Time `engine.infer` per frame (conversion included, I/O excluded) after `warmup` frames;
    `alpha_only` asks as streams ask (no foreground)."""
    if not frames:
        raise ValueError("need at least one frame to benchmark")
    batches = [frames_to_batch([f]) for f in frames]
    state: Any = None
    for i in range(warmup):
        batch = batches[i % len(batches)]
        state = engine.infer(batch, state, downsample_ratio, alpha_only=alpha_only).state
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        state = engine.infer(batch, state, downsample_ratio, alpha_only=alpha_only).state
        times.append((time.perf_counter() - start) * 1e3)
        if on_frame is not None:
            on_frame(i + 1)
    ms = np.asarray(times)
    height, width = frames[0].shape[:2]
    return BenchResult(
        engine=engine.name,
        size=f"{width}x{height}",
        downsample_ratio=downsample_ratio,
        frames=len(times),
        fps=float(1e3 * len(times) / ms.sum()),
        ms_mean=float(ms.mean()),
        ms_p50=float(np.percentile(ms, 50)),
        ms_p90=float(np.percentile(ms, 90)),
        ms_p99=float(np.percentile(ms, 99)),
        ms_max=float(ms.max()),
        threads=threads,
    )


def compare_speed(
    engines: Mapping[str, Engine],
    frames: list[NDArray[np.uint8]],
    downsample_ratio: float,
    *,
    rounds: int = 3,
    warmup: int = 3,
    alpha_only: bool = True,
    pause_s: float = 0.3,
) -> dict[str, float]:
    """Frames per second of each engine on the same `frames`, as the median of `rounds`
    interleaved rounds (machine noise hits all alike; a pause lets the previous engine's
    spinning thread pool go idle). Keys as in `engines`."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    fps: dict[str, list[float]] = {key: [] for key in engines}
    for _ in range(rounds):
        for key, engine in engines.items():
            time.sleep(pause_s)
            result = run_benchmark(
                engine, frames, downsample_ratio, warmup=warmup, alpha_only=alpha_only
            )
            fps[key].append(result.fps)
    return {key: statistics.median(values) for key, values in fps.items()}
