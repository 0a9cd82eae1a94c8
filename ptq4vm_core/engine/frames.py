"""Conversions between video frames (HWC uint8) and engine tensors (NCHW float32)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Float32Array
from ptq4vm_core.io.video import to_uint8


def frames_to_batch(frames: list[NDArray[np.uint8]]) -> Float32Array:
    """B frames [H,W,3] uint8 RGB -> [B,3,H,W] float32 in [0,1]."""
    if not frames:
        raise ValueError("no frames to convert")
    batch = np.stack(frames).astype(np.float32)
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"frames must be [H,W,3] RGB, got {frames[0].shape}")
    batch *= np.float32(1.0 / 255.0)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def alpha_to_uint8(pha: Float32Array) -> NDArray[np.uint8]:
    """pha [1,H,W] or [H,W] float in [0,1] -> [H,W] uint8."""
    return to_uint8(pha.reshape(pha.shape[-2:]))


def rgb_to_uint8(chw: Float32Array) -> NDArray[np.uint8]:
    """[3,H,W] float in [0,1] -> [H,W,3] uint8."""
    return to_uint8(chw.transpose(1, 2, 0))
