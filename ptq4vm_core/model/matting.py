"""MattingNetwork: wires the encoder, LR-ASPP, recurrent decoder, projection and refiner."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ptq4vm_core.model.decoder import (
    BottleneckBlock,
    OutputBlock,
    UpsamplingBlock,
    image_pyramid,
)
from ptq4vm_core.model.lraspp import LRASPP
from ptq4vm_core.model.mobilenetv3 import LAST_CHANNELS, MobileNetV3Encoder
from ptq4vm_core.model.refiner import DeepGuidedFilterRefiner
from ptq4vm_core.model.resize import resize_scale
from ptq4vm_core.model.state import RecurrentState

FEATURE_CHANNELS = (16, 24, 40, 128)  # f1, f2, f3 and the LR-ASPP output
DECODER_CHANNELS = (80, 40, 32, 16)


class MattingOutput(NamedTuple):
    """fgr [B,3,H,W] and pha [B,1,H,W] float in [0,1] ([B,T,...] for a time series), and the
    recurrent state to pass with the next frame."""

    fgr: Tensor
    pha: Tensor
    state: RecurrentState


def check_downsample_ratio(ratio: float) -> float:
    """Validate a downsample ratio: the network runs at ratio x the input size, 0 < ratio <= 1."""
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise ValueError(
            f"downsample_ratio must be a number in (0, 1], got {ratio!r}; "
            "use 1.0 up to ~512 px, about 0.4 for 720p and 0.25 for 1080p"
        )
    return float(ratio)


class MattingNetwork(nn.Module):
    """Robust Video Matting, MobileNetV3-Large variant, BN folded into every convolution.

    Call with src [B,3,H,W] (one frame) or [B,T,3,H,W] (a time series), RGB float in [0,1].
    The network runs at ``downsample_ratio`` x the input size and the Deep Guided Filter lifts
    the result back to full size. As in the published ONNX graph, the refiner runs at every
    ratio, 1.0 included, so the two agree at every size.
    """

    def __init__(self) -> None:
        super().__init__()
        f1, f2, f3, f4 = FEATURE_CHANNELS
        d3, d2, d1, d0 = DECODER_CHANNELS
        self.backbone = MobileNetV3Encoder()
        self.aspp = LRASPP(LAST_CHANNELS, f4)
        # Registration order is execution order; weights.py relies on it to match the ONNX graph.
        self.decode4 = BottleneckBlock(f4)
        self.decode3 = UpsamplingBlock(f4, f3, d3)
        self.decode2 = UpsamplingBlock(d3, f2, d2)
        self.decode1 = UpsamplingBlock(d2, f1, d1)
        self.decode0 = OutputBlock(d1, d0)
        self.project_mat = nn.Conv2d(d0, 4, 1, bias=True)
        self.refiner = DeepGuidedFilterRefiner(d0)

    def forward(
        self,
        src: Tensor,
        state: RecurrentState | None = None,
        downsample_ratio: float = 1.0,
    ) -> MattingOutput:
        ratio = check_downsample_ratio(downsample_ratio)
        if src.dim() == 4:
            return self.forward_frame(src, state, ratio)
        if src.dim() != 5 or src.shape[2] != 3:
            raise ValueError(
                f"src must be [B,3,H,W] or [B,T,3,H,W] RGB, got shape {tuple(src.shape)}"
            )
        fgrs, phas = [], []
        for t in range(src.shape[1]):
            fgr, pha, state = self.forward_frame(src[:, t], state, ratio)
            fgrs.append(fgr)
            phas.append(pha)
        if state is None:
            raise ValueError("src has no frames (T == 0)")
        return MattingOutput(torch.stack(fgrs, 1), torch.stack(phas, 1), state)

    def forward_frame(
        self, src: Tensor, state: RecurrentState | None, downsample_ratio: float
    ) -> MattingOutput:
        """One frame: src [B,3,H,W] in [0,1] -> MattingOutput for that frame."""
        if src.dim() != 4 or src.shape[1] != 3:
            raise ValueError(f"src must be [B,3,H,W] RGB, got shape {tuple(src.shape)}")
        src_sm = resize_scale(src, downsample_ratio) if downsample_ratio != 1.0 else src
        r1, r2, r3, r4 = state if state is not None else (None, None, None, None)

        f1, f2, f3, f4 = self.backbone(src_sm)
        f4 = self.aspp(f4)
        s1, s2, s3 = image_pyramid(src_sm)
        x4, r4 = self.decode4(f4, r4)
        x3, r3 = self.decode3(x4, f3, s3, r3)
        x2, r2 = self.decode2(x3, f2, s2, r2)
        x1, r1 = self.decode1(x2, f1, s1, r1)
        hidden = self.decode0(x1, src_sm)
        out = self.project_mat(hidden)
        out = self.refiner(src, src_sm, out, hidden)

        fgr = (out[:, :3] + src).clamp(0.0, 1.0)
        pha = out[:, 3:].clamp(0.0, 1.0)
        return MattingOutput(fgr, pha, RecurrentState(r1, r2, r3, r4))
