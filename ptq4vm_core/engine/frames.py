"""Conversions between video frames (HWC uint8) and engine tensors (NCHW float32)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import (
    Engine,
    EngineOutput,
    Float32Array,
    FrameEngine,
    Mattes,
    S,
    Uint8Array,
)
from ptq4vm_core.io.video import to_uint8

PIXEL_SCALE = np.float32(1.0 / 255.0)
"""uint8 -> [0,1]: x * PIXEL_SCALE in float32 (engines that take frames multiply by it too)."""
# Every uint8 value's float: x * float32(1/255) computed in float32, so a lookup in it is the
# same conversion, bit for bit, as the multiplication (tests/engine/test_frames.py).
_TO_FLOAT = np.arange(256, dtype=np.float32) * PIXEL_SCALE


def frames_to_batch(frames: list[NDArray[np.uint8]]) -> Float32Array:
    """B frames [H,W,3] uint8 RGB, all one size -> [B,3,H,W] float32 in [0,1], contiguous.

    Each frame (any strides: a read-only buffer or a BGR image reversed as a view will do;
    C-contiguous is the fast case) is split into its three planes, and each plane is looked
    up in `_TO_FLOAT` straight into its place in the batch: x * float32(1/255) in float32.
    Half the time of a multiplication through a transposed view, which reads the frame
    across its channels: this runs once per served frame."""
    if not frames:
        raise ValueError("no frames to convert")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape for f in frames):
        raise ValueError(
            f"frames must be [H,W,3] RGB of one size, got {[list(f.shape) for f in frames]}"
        )
    batch = np.empty((len(frames), 3, shape[0], shape[1]), np.float32)
    for row, frame in zip(batch, frames, strict=True):
        planes = cv2.split(np.ascontiguousarray(frame, dtype=np.uint8))
        for plane, out in zip(planes, row, strict=True):
            cv2.LUT(plane, _TO_FLOAT, dst=out)
    return batch


def check_frames(frames: Uint8Array) -> None:
    """ValueError unless `frames` is uint8 [B,H,W,3] (what `infer_frames` takes)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(
            f"frames must be uint8 [B,H,W,3] RGB, got {frames.dtype} {list(frames.shape)}"
        )


def infer_frames(
    engine: Engine[S],
    frames: Uint8Array,
    state: S | None,
    downsample_ratio: float,
    *,
    alpha_only: bool = False,
) -> EngineOutput[S]:
    """`engine` on B frames, uint8 [B,H,W,3] RGB of one stream shape: an engine that takes
    frames itself (`FrameEngine`, OpenVINO) converts them in its graph (and checks them);
    any other is given `frames_to_batch` of them."""
    if isinstance(engine, FrameEngine):
        return engine.infer_frames(frames, state, downsample_ratio, alpha_only=alpha_only)
    check_frames(frames)
    return engine.infer(
        frames_to_batch(list(frames)), state, downsample_ratio, alpha_only=alpha_only
    )


def infer_mattes(
    engine: Engine[S],
    frames: Uint8Array,
    state: S | None,
    downsample_ratio: float,
    *,
    alpha_only: bool = False,
) -> Mattes[S]:
    """`infer_frames`, the alpha as the bytes a stream is served ([B,H,W] uint8, `to_uint8`):
    turned into them in the graph by an engine that takes frames itself, by `alpha_to_uint8`
    here for any other."""
    if isinstance(engine, FrameEngine):
        return engine.infer_mattes(frames, state, downsample_ratio, alpha_only=alpha_only)
    out = infer_frames(engine, frames, state, downsample_ratio, alpha_only=alpha_only)
    return Mattes(out.fgr, np.stack([alpha_to_uint8(p) for p in out.pha]), out.state)


def alpha_to_uint8(pha: Float32Array) -> NDArray[np.uint8]:
    """pha [1,H,W] or [H,W] float in [0,1] -> [H,W] uint8."""
    return to_uint8(pha.reshape(pha.shape[-2:]))


def rgb_to_uint8(chw: Float32Array) -> NDArray[np.uint8]:
    """[3,H,W] float in [0,1] -> [H,W,3] uint8."""
    return to_uint8(chw.transpose(1, 2, 0))
