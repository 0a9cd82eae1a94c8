"""YUV4MPEG2 output: the raw 4:2:0 video a browser's fake camera plays
(Chromium's `--use-file-for-fake-video-capture`), for the browser tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray


def write_y4m(frames: Iterable[NDArray[np.uint8]], path: Path, fps: int = 15) -> Path:
    """RGB frames ([H,W,3] uint8, one size, even sides) as a YUV4MPEG2 (4:2:0) file."""
    with path.open("wb") as f:
        for index, frame in enumerate(frames):
            if index == 0:
                height, width = frame.shape[:2]
                f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path
