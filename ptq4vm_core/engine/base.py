"""What every engine offers: one pure step from (frames, state) to (mattes, new state)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Generic, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from typing_extensions import TypeVar

from ptq4vm_core.model.matting import check_downsample_ratio

Float32Array = NDArray[np.float32]
Uint8Array = NDArray[np.uint8]
StateArray = Float32Array | torch.Tensor
StateFields = tuple[StateArray, ...]
"""What any engine state is: an immutable NamedTuple of per-stream arrays, batch first. Its
class rebuilds it from its fields (`server.inference.batching` stacks and splits states so)."""


class EngineState(NamedTuple):
    """RVM's four ConvGRU states r1..r4 as every engine here takes and returns them: float32
    numpy arrays [B,C,h,w] (shapes and ranges in `model.state.RecurrentState`). ONNX Runtime and
    OpenVINO carry them through the graph's r1i..r4i / r1o..r4o; the PyTorch engines convert
    to and from the model's `RecurrentState` of tensors (no copy on the CPU)."""

    r1: Float32Array
    r2: Float32Array
    r3: Float32Array
    r4: Float32Array


S = TypeVar("S", bound=StateFields, default=EngineState)
"""The state type of one engine: what its `infer` returns is what it takes back. The default
is the state of every engine of this package; other values (test doubles) name their own."""


class EngineKind(StrEnum):
    """How a model is run. AUTO picks the deployed engine for the model (what users get)."""

    AUTO = "auto"
    ORT = "ort"  # ONNX Runtime: the published FP32 graph, or an artifact's int8 QDQ graph
    OPENVINO = "openvino"  # OpenVINO, static shapes per stream: the same graphs as ORT
    TORCH = "torch"  # the PyTorch FP32 network
    SIM = "sim"  # PyTorch simulation of a quantized artifact


class EngineOutput(NamedTuple, Generic[S]):
    """fgr [B,3,H,W] and pha [B,1,H,W] float32 in [0,1]; `state` goes with the next frame.
    `fgr` is None only when the caller asked for alpha only and the engine skipped the
    foreground (`foreground` reads it where it must be there)."""

    fgr: Float32Array | None
    pha: Float32Array
    state: S

    def foreground(self) -> Float32Array:
        """fgr, which a call without `alpha_only` always computes."""
        if self.fgr is None:
            raise RuntimeError("the foreground was not computed: the call asked for alpha only")
        return self.fgr


class Engine(Protocol[S]):
    """A loaded model that mattes frames. Engines are shared between streams and keep no
    per-stream data: the recurrent state is passed in and returned (`None` = new stream)."""

    @property
    def name(self) -> str:
        """Short identifier reported to users, e.g. ``ort-fp32``."""
        ...

    def infer(
        self,
        src: Float32Array,
        state: S | None,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> EngineOutput[S]:
        """src [B,3,H,W] float32 RGB in [0,1]. The state must come from the same engine and
        the same frame size; a size change needs a new stream. `alpha_only`: the caller
        needs no foreground; an engine may then skip computing it (fgr None) or not."""
        ...


class Mattes(NamedTuple, Generic[S]):
    """What a stream is served: `alpha` [B,H,W] uint8, the matte's bytes (`io.compose.to_uint8`
    of `EngineOutput.pha`, the one float-to-8-bit conversion); fgr and state as there."""

    fgr: Float32Array | None
    alpha: Uint8Array
    state: S


Output = EngineOutput[EngineState]
MaybeState = EngineState | None


class StepEngine(ABC):
    """What the engines of this package share: `infer` checks the ratio and takes `src` as
    C-contiguous float32, then the engine's `step` runs the frame(s)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """As `Engine.name`."""

    def infer(
        self,
        src: Float32Array,
        state: EngineState | None,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> EngineOutput[EngineState]:
        """As `Engine.infer`."""
        ratio = check_downsample_ratio(downsample_ratio)
        return self.step(np.ascontiguousarray(src, dtype=np.float32), state, ratio, alpha_only)

    @abstractmethod
    def step(self, src: Float32Array, state: MaybeState, ratio: float, alpha_only: bool) -> Output:
        """`infer`, its ratio checked and `src` contiguous float32."""


@runtime_checkable
class FrameEngine(Protocol[S]):
    """An engine that takes video frames themselves, uint8 [B,H,W,3] RGB, and turns them into
    its float input inside its own graph (OpenVINO: on its threads, without the [B,3,H,W]
    float32 copy). `frames.infer_frames` calls any engine so."""

    def infer_frames(
        self,
        frames: Uint8Array,
        state: S | None,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> EngineOutput[S]:
        """As `Engine.infer` on `frames.frames_to_batch` of the frames."""
        ...

    def infer_mattes(
        self,
        frames: Uint8Array,
        state: S | None,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> Mattes[S]:
        """As `infer_frames`, the alpha turned into its bytes in the graph too."""
        ...


@runtime_checkable
class CompilingEngine(Protocol):
    """An engine that specialises itself per stream shape (OpenVINO's static shapes)."""

    def compile_shape(
        self,
        batch: int,
        height: int,
        width: int,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
        frames: bool = False,
        mattes: bool = False,
    ) -> float:
        """Makes the first frame of that shape fast (compiles now); returns the seconds taken.
        `frames`: for `infer_frames` (uint8 frames in) rather than `infer`; `mattes`: for
        `infer_mattes` (uint8 frames in, uint8 alpha out)."""
        ...


def compile_shape(
    engine: Engine[S],
    batch: int,
    height: int,
    width: int,
    downsample_ratio: float,
    *,
    alpha_only: bool = False,
    frames: bool = False,
    mattes: bool = False,
) -> float:
    """Compiles `engine` for a stream shape (and whether the stream wants alpha only, and
    whether it is fed frames through `infer_frames`, or `infer_mattes`) ahead of its first
    frame where it compiles per shape (call it off the event loop); 0 for engines that do
    not."""
    if isinstance(engine, CompilingEngine):
        return engine.compile_shape(
            batch, height, width, downsample_ratio,
            alpha_only=alpha_only, frames=frames, mattes=mattes,
        )  # fmt: skip
    return 0.0
