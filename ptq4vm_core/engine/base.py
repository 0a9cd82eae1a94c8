"""What every engine offers: one pure step from (frames, state) to (mattes, new state)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]
StateArray = Float32Array | torch.Tensor
EngineState = tuple[StateArray, ...]
"""A stream's recurrent state as an engine returns it: an immutable NamedTuple of per-stream
arrays, batch first (RVM's r1..r4 [B,C,h,w]: `OrtState` of numpy arrays for ONNX Runtime and
OpenVINO, `RecurrentState` of torch tensors for PyTorch). Its class rebuilds it from its fields
(`server.batching` stacks and splits states so)."""


class EngineKind(StrEnum):
    """How a model is run. AUTO picks the deployed engine for the model (what users get)."""

    AUTO = "auto"
    ORT = "ort"  # ONNX Runtime: the published FP32 graph, or an artifact's int8 QDQ graph
    OPENVINO = "openvino"  # OpenVINO, static shapes per stream: the same graphs as ORT
    TORCH = "torch"  # the PyTorch FP32 network
    SIM = "sim"  # PyTorch simulation of a quantized artifact


class EngineOutput(NamedTuple):
    """fgr [B,3,H,W] and pha [B,1,H,W] float32 in [0,1]; `state` goes with the next frame."""

    fgr: Float32Array
    pha: Float32Array
    # Any until each engine names its own state type here (EngineOutput generic over it): a
    # concrete engine's output state must go back into that engine's `infer`.
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


@runtime_checkable
class CompilingEngine(Protocol):
    """An engine that specialises itself per stream shape (OpenVINO's static shapes)."""

    def prepare(self, batch: int, height: int, width: int, downsample_ratio: float) -> float:
        """Makes the first frame of that shape fast (compiles now); returns the seconds taken."""
        ...


def prepare_engine(
    engine: Engine, batch: int, height: int, width: int, downsample_ratio: float
) -> float:
    """Compiles `engine` for a stream shape ahead of its first frame where it compiles per
    shape (call it off the event loop); 0 for engines that do not."""
    if isinstance(engine, CompilingEngine):
        return engine.prepare(batch, height, width, downsample_ratio)
    return 0.0
