"""Matting a whole clip frame by frame with the recurrent state carried."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Engine, Float32Array, S
from ptq4vm_core.engine.frames import infer_frames
from ptq4vm_core.model.matting import check_downsample_ratio


def auto_downsample_ratio(width: int, height: int, target: int = 512) -> float:
    """RVM's guidance: run the network at about `target` px on the long side, never upscale."""
    return min(1.0, target / max(width, height))


def resolve_downsample_ratio(requested: float | None, width: int, height: int) -> float:
    """The ratio a user asked for, validated, or RVM's guidance for the frame size."""
    return check_downsample_ratio(
        requested if requested is not None else auto_downsample_ratio(width, height)
    )


@dataclass(frozen=True)
class MatteFrame:
    """One processed frame: the input [H,W,3] uint8, fgr [3,H,W] and pha [1,H,W] float32."""

    index: int
    src: NDArray[np.uint8]
    fgr: Float32Array
    pha: Float32Array


def matte_frames(
    engine: Engine[S], frames: Iterable[NDArray[np.uint8]], downsample_ratio: float
) -> Iterator[MatteFrame]:
    """Run `engine` over `frames` ([H,W,3] uint8 RGB, all one size) as one stream, each frame
    given to the engine as the server gives it (`frames.infer_frames`): the same mattes."""
    state: S | None = None
    size: tuple[int, ...] | None = None
    for index, frame in enumerate(frames):
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise ValueError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the stream started at "
                f"{size[1]}x{size[0]}; all frames of a clip must have one size"
            )
        out = infer_frames(engine, frame[None], state, downsample_ratio)
        state = out.state
        yield MatteFrame(index, frame, out.foreground()[0], out.pha[0])
