"""MediaPipe selfie segmentation as a benchmark peer: the child program.

MediaPipe is the model browser conferencing runs for background blur; as a peer it is the speed
floor of the field. `mediapipe==0.10.21` ships `selfie_segmentation.tflite` (general, 256x256)
and `selfie_segmentation_landscape.tflite` (144x256) inside its wheel, so nothing is fetched
at run time. Its wheel wants numpy < 2 and opencv-contrib-python, which the project's
environment cannot take, so it lives in a virtual environment of its own (`make
bench-mediapipe` makes `.venv-mediapipe`) and this program runs there, standalone (numpy and
mediapipe only), driven over its stdin/stdout by `benchmarks/mediapipe_client.py`.

Protocol, one request at a time: a JSON header line, then raw bytes.
- `{"cmd": "mask", "h": H, "w": W}` + H*W*3 RGB bytes -> H*W float32 mask bytes in [0, 1].
- `{"cmd": "bench", "h": H, "w": W, "k": K, "n": N, "warmup": M}` + K frames of H*W*3 RGB
  bytes -> one JSON line `{"ms": [...]}`: N timed segmentations cycling through the K frames
  after M untimed ones (the time inside MediaPipe's graph only, no pipe transfer).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import mediapipe as mp
import numpy as np


def main() -> None:
    model = int(sys.argv[1]) if len(sys.argv) > 1 else 1  # 1: landscape, 0: general
    segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(json.dumps({"ready": True, "version": mp.__version__}).encode() + b"\n")
    stdout.flush()
    while line := stdin.readline():
        request: dict[str, Any] = json.loads(line)
        h, w = int(request["h"]), int(request["w"])
        size = h * w * 3
        if request["cmd"] == "mask":
            frame = np.frombuffer(stdin.read(size), np.uint8).reshape(h, w, 3)
            mask = segmenter.process(frame).segmentation_mask
            stdout.write(np.ascontiguousarray(mask, np.float32).tobytes())
        elif request["cmd"] == "bench":
            frames = [
                np.frombuffer(stdin.read(size), np.uint8).reshape(h, w, 3)
                for _ in range(int(request["k"]))
            ]
            for i in range(int(request["warmup"])):
                segmenter.process(frames[i % len(frames)])
            ms = []
            for i in range(int(request["n"])):
                start = time.perf_counter()
                segmenter.process(frames[i % len(frames)])
                ms.append((time.perf_counter() - start) * 1e3)
            stdout.write(json.dumps({"ms": ms}).encode() + b"\n")
        else:
            raise ValueError(f"unknown command {request['cmd']!r}")
        stdout.flush()


if __name__ == "__main__":
    main()
