"""Live capture: a camera (a V4L2 device on Linux, AVFoundation on macOS, DirectShow on
Windows) through OpenCV's `VideoCapture`, frames as they come.

A device is a number (`0`: the first camera) or a path (`/dev/video2`); anything else OpenCV's
capture opens (a file, a stream URL) is taken as well, which is how the tests drive this code
without a camera. PyAV's wheels carry no V4L2 input, so cameras go through OpenCV here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.io.reader import VideoReadError

DEFAULT_FPS = 30.0  # what a camera that does not say its rate is taken to run at


@dataclass
class Camera:
    """An open capture; `frames()` reads it, `close()` releases it (or use `with`)."""

    device: str
    capture: cv2.VideoCapture
    width: int
    height: int
    fps: Fraction

    def frames(self, seconds: float | None = None) -> Iterator[NDArray[np.uint8]]:
        """[H,W,3] uint8 RGB frames as the device delivers them (each read waits for the
        next), for `seconds` or until the device ends (a file) or fails."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            ok, frame = self.capture.read()
            if not ok:
                return
            yield np.ascontiguousarray(frame[..., ::-1])

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_camera(device: str) -> Camera:
    """Opens `device` (`0`, `/dev/video0`, ...); VideoReadError when it cannot be opened or
    gives no frame size."""
    source: int | str = int(device) if device.isdigit() else device
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(
            f"cannot open camera {device!r}: no such device, or it is busy or not permitted "
            "(a number picks the Nth camera, e.g. 0; a path names one, e.g. /dev/video0)"
        )
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0:
        capture.release()
        raise VideoReadError(f"camera {device!r} gives no frame size")
    rate = capture.get(cv2.CAP_PROP_FPS)
    fps = Fraction(rate).limit_denominator(1001) if 0 < rate <= 240 else Fraction(DEFAULT_FPS)
    return Camera(device, capture, width, height, fps)
