"""The PyTorch FP32 network as an engine (reference, and the base for quantization)."""

from __future__ import annotations

import torch

from ptq4vm_core.engine.base import EngineState, Float32Array, MaybeState, Output, StepEngine
from ptq4vm_core.model import MattingNetwork, RecurrentState


class TorchEngine(StepEngine):
    """Runs a MattingNetwork in PyTorch: the FP32 network, or a quantized one in simulation.

    Its state is the `EngineState` of numpy arrays that every engine takes and returns (so
    streams, batching and callers treat all engines alike), converted to and from the model's
    `RecurrentState` of tensors: `torch.from_numpy` and `Tensor.numpy` share memory on the CPU,
    so the conversion copies nothing there."""

    def __init__(
        self,
        model: MattingNetwork,
        *,
        device: str | torch.device = "cpu",
        name: str = "torch-fp32",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @torch.inference_mode()
    def step(self, src: Float32Array, state: MaybeState, ratio: float, alpha_only: bool) -> Output:
        x = torch.from_numpy(src).to(self.device)
        hidden = None
        if state is not None:
            hidden = RecurrentState(*(torch.from_numpy(r).to(self.device) for r in state))
        out = self.model(x, hidden, ratio)
        fields = (r.cpu().numpy() for r in out.state)
        return Output(out.fgr.cpu().numpy(), out.pha.cpu().numpy(), EngineState(*fields))
