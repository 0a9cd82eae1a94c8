"""MediaPipe selfie segmentation as an `Engine`, for the engine benchmark's speed and quality
rows: it drives `benchmarks/mediapipe_peer.py` in MediaPipe's own environment (`make
bench-mediapipe`; see that file for why it is apart).

Quality goes through `infer` like any engine (MediaPipe keeps no recurrent state; the state
passed in and returned is None). Speed goes through `bench`, timed inside the child, so the
pipe between the processes is not counted against MediaPipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import EngineOutput, Float32Array

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-mediapipe" / "bin" / "python"
PEER = Path(__file__).resolve().parent / "mediapipe_peer.py"
MODELS = {0: "general (256x256)", 1: "landscape (144x256)"}


def mediapipe_available() -> str | None:
    """None where the peer can run, else why not."""
    if not PYTHON.is_file():
        return f"{PYTHON} is missing: `make bench-mediapipe` makes it (mediapipe==0.10.21)"
    return None


class MediaPipeEngine:
    """MediaPipe's selfie segmentation (`model` 1: landscape, 0: general) in a child process."""

    def __init__(self, model: int = 1) -> None:
        if model not in MODELS:
            raise ValueError(f"model={model}: MediaPipe's selfie segmentation has {list(MODELS)}")
        missing = mediapipe_available()
        if missing is not None:
            raise RuntimeError(missing)
        self.model = model
        self._proc = subprocess.Popen(
            [str(PYTHON), str(PEER), str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.version = str(self._header()["version"])

    @property
    def name(self) -> str:
        return f"mediapipe-selfie-{'landscape' if self.model else 'general'}"

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError("the MediaPipe peer has no pipes")
        return self._proc.stdin, self._proc.stdout

    def _header(self) -> dict[str, Any]:
        line = self._pipes()[1].readline()
        if not line:
            raise RuntimeError(f"the MediaPipe peer exited ({self._proc.wait()})")
        data: dict[str, Any] = json.loads(line)
        return data

    def _send(self, request: dict[str, Any], frames: list[NDArray[np.uint8]]) -> None:
        stdin, _ = self._pipes()
        stdin.write(json.dumps(request).encode() + b"\n")
        for frame in frames:
            stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        stdin.flush()

    def infer(
        self, src: Float32Array, state: Any, downsample_ratio: float, *, alpha_only: bool = False
    ) -> EngineOutput[Any]:
        """src [B,3,H,W] float32 RGB in [0,1] -> pha [B,1,H,W]; MediaPipe predicts no
        foreground, so the input stands for it (what a compositor uses then); no state."""
        batch, _, height, width = src.shape
        masks = []
        for i in range(batch):
            rgb = np.clip(np.rint(src[i].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            self._send({"cmd": "mask", "h": height, "w": width}, [rgb])
            data = self._pipes()[1].read(height * width * 4)
            masks.append(np.frombuffer(data, np.float32).reshape(1, height, width))
        return EngineOutput(src, np.stack(masks).astype(np.float32), None)

    def bench(self, frames: list[NDArray[np.uint8]], warmup: int = 3) -> list[float]:
        """Milliseconds per segmentation of each of `frames` (RGB uint8 [H,W,3], one size),
        timed inside MediaPipe's process after `warmup` untimed ones."""
        unique = frames[: min(len(frames), 30)]
        height, width = unique[0].shape[:2]
        self._send({"cmd": "bench", "h": height, "w": width, "k": len(unique),
                    "n": len(frames), "warmup": warmup}, unique)  # fmt: skip
        return [float(ms) for ms in self._header()["ms"]]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


if __name__ == "__main__":  # a smoke check: python benchmarks/mediapipe_client.py
    engine = MediaPipeEngine()
    frame = np.zeros((288, 512, 3), np.uint8)
    print(engine.name, engine.version, np.median(engine.bench([frame] * 10)), "ms", file=sys.stderr)
    engine.close()
