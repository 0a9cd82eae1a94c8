"""The PyTorch FP32 network as an engine (reference, and the base for quantization)."""

from __future__ import annotations

import numpy as np
import torch

from ptq4vm_core.engine.base import EngineOutput, Float32Array
from ptq4vm_core.model import MattingNetwork, RecurrentState


class TorchEngine:
    """Runs a MattingNetwork in PyTorch: the FP32 network, or a quantized one in simulation."""

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
    def infer(
        self, src: Float32Array, state: RecurrentState | None, downsample_ratio: float
    ) -> EngineOutput:
        x = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).to(self.device)
        out = self.model(x, state, downsample_ratio)
        return EngineOutput(out.fgr.cpu().numpy(), out.pha.cpu().numpy(), out.state)
