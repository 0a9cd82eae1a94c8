"""What every engine offers: one pure step from (frames, state) to (mattes, new state)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]


class EngineKind(StrEnum):
    """How a model is run. AUTO picks the deployed engine for the model (what users get)."""

    AUTO = "auto"
    ORT = "ort"  # ONNX Runtime: the published FP32 graph, or an artifact's int8 QDQ graph
    TORCH = "torch"  # the PyTorch FP32 network
    SIM = "sim"  # PyTorch simulation of a quantized artifact


class EngineOutput(NamedTuple):
    """fgr [B,3,H,W] and pha [B,1,H,W] float32 in [0,1]; `state` goes with the next frame."""

    fgr: Float32Array
    pha: Float32Array
    state: Any


class Engine(Protocol):
    """A loaded model that mattes frames. Engines are shared between streams and keep no
    per-stream data: the recurrent state is passed in and returned (`None` = new stream)."""

    @property
    def name(self) -> str:
        """Short identifier reported to users, e.g. ``ort-fp32``."""
        ...

    def infer(self, src: Float32Array, state: Any | None, downsample_ratio: float) -> EngineOutput:
        """src [B,3,H,W] float32 RGB in [0,1]. The state must come from the same engine and
        the same frame size; a size change needs a new stream."""
        ...
