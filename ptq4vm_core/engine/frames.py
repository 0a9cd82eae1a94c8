"""Conversions between video frames (HWC uint8) and engine tensors (NCHW float32)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Float32Array
from ptq4vm_core.io.video import to_uint8

_SCALE = np.float32(1.0 / 255.0)


def frames_to_batch(frames: list[NDArray[np.uint8]]) -> Float32Array:
    """B frames [H,W,3] uint8 RGB, all one size -> [B,3,H,W] float32 in [0,1], contiguous.

    The one copy between a frame and an engine's input: each frame is read once, through a
    transposed view (any strides: a read-only buffer or a BGR image reversed as a view will
    do), and written converted and scaled into the batch (x * float32(1/255) in float32)."""
    if not frames:
        raise ValueError("no frames to convert")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape for f in frames):
        raise ValueError(
            f"frames must be [H,W,3] RGB of one size, got {[list(f.shape) for f in frames]}"
        )
    batch = np.empty((len(frames), 3, shape[0], shape[1]), np.float32)
    for row, frame in zip(batch, frames, strict=True):
        np.multiply(frame.transpose(2, 0, 1), _SCALE, out=row, dtype=np.float32)
    return batch


def alpha_to_uint8(pha: Float32Array) -> NDArray[np.uint8]:
    """pha [1,H,W] or [H,W] float in [0,1] -> [H,W] uint8."""
    return to_uint8(pha.reshape(pha.shape[-2:]))


def rgb_to_uint8(chw: Float32Array) -> NDArray[np.uint8]:
    """[3,H,W] float in [0,1] -> [H,W,3] uint8."""
    return to_uint8(chw.transpose(1, 2, 0))
