"""From a streamed frame's bytes to an engine's float input: time per frame, and a check that
the result is bit-identical to the former four-copy conversion (kept here as the reference).
The server hands the decoded frame itself to the engine (`frames.infer_frames`): OpenVINO
converts it in its graph, every other engine gets `frames_to_batch` of it, timed here.

    .venv/bin/python benchmarks/frame_input.py [--rounds N]

Prints one line per (size, input format): ms per frame before and after.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Float32Array
from ptq4vm_core.engine.frames import frames_to_batch
from server.streaming.codec import InputFormat, decode_frame

SIZES = ((512, 288), (1280, 720))


def former(data: bytes, fmt: InputFormat, width: int, height: int) -> Float32Array:
    """What the server did before: a contiguous RGB copy of the decoded image, then
    stack -> astype -> scale -> contiguous transpose."""
    if fmt == "rgb24":
        rgb: NDArray[np.uint8] = np.frombuffer(data, np.uint8).reshape(height, width, 3)
    else:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("not a decodable image")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
    batch = np.stack([rgb]).astype(np.float32)
    batch *= np.float32(1.0 / 255.0)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def current(data: bytes, fmt: InputFormat, width: int, height: int) -> Float32Array:
    return frames_to_batch([decode_frame(data, fmt, width, height)])


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
        messages: dict[InputFormat, bytes] = {
            "rgb24": rgb.tobytes(),
            "jpeg": cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes(),
            "png": cv2.imencode(".png", rgb[..., ::-1])[1].tobytes(),
        }
        for fmt, data in messages.items():
            a, b = former(data, fmt, width, height), current(data, fmt, width, height)
            if not (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)):
                raise SystemExit(f"{width}x{height} {fmt}: results differ")
            before = median_ms(lambda: former(data, fmt, width, height), args.rounds)  # noqa: B023
            after = median_ms(lambda: current(data, fmt, width, height), args.rounds)  # noqa: B023
            print(
                f"{width}x{height} {fmt:5s}: before {before:6.3f} ms  after {after:6.3f} ms  "
                f"({before - after:+.3f} ms, bit-identical)"
            )


if __name__ == "__main__":
    main()
