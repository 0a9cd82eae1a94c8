"""MattingNetwork: wires the encoder, LR-ASPP, recurrent decoder, projection and refiner."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ptq4vm_core.closure import Closure, Env, run_closures
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
        # Registration order is the graph's conv order: see `convs_in_graph_order`.
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
        env = self.frame_env(src, state, downsample_ratio)
        run_closures(self.closures(), env)
        return self.frame_output(env)

    @staticmethod
    def frame_env(src: Tensor, state: RecurrentState | None, downsample_ratio: float) -> Env:
        """The per-frame environment the closures start from: the frame at full and network
        resolution, the image pyramid the decoder joins in, and the GRU states r1..r4."""
        if src.dim() != 4 or src.shape[1] != 3:
            raise ValueError(f"src must be [B,3,H,W] RGB, got shape {tuple(src.shape)}")
        src_sm = resize_scale(src, downsample_ratio) if downsample_ratio != 1.0 else src
        s1, s2, s3 = image_pyramid(src_sm)
        r1, r2, r3, r4 = state if state is not None else (None, None, None, None)
        return {
            "src": src, "src_sm": src_sm, "s1": s1, "s2": s2, "s3": s3,
            "r1": r1, "r2": r2, "r3": r3, "r4": r4,
        }  # fmt: skip

    @staticmethod
    def frame_output(env: Env) -> MattingOutput:
        values = [env[k] for k in ("fgr", "pha", "r1", "r2", "r3", "r4")]
        fgr, pha, r1, r2, r3, r4 = (v for v in values if v is not None)
        return MattingOutput(fgr, pha, RecurrentState(r1, r2, r3, r4))

    def closures(self) -> list[Closure]:
        """The functional closures in execution order: five backbone stages, LR-ASPP, each
        decoder block with its ConvGRU, the output block with the projection, the refiner."""
        enc = self.backbone
        stage0, stage1, stage2, stage3, stage4 = (enc.stage(i) for i in range(5))

        def first_stage(x: Tensor) -> tuple[Tensor]:
            return (stage0(enc.normalize(x)),)

        def output(x1: Tensor, src_sm: Tensor) -> tuple[Tensor, Tensor]:
            hidden = self.decode0(x1, src_sm)
            return hidden, self.project_mat(hidden)

        def refine(
            src: Tensor, src_sm: Tensor, coarse: Tensor, hidden: Tensor
        ) -> tuple[Tensor, Tensor]:
            out = self.refiner(src, src_sm, coarse, hidden)
            return (out[:, :3] + src).clamp(0.0, 1.0), out[:, 3:].clamp(0.0, 1.0)

        def one(module: nn.Module) -> Callable[[Tensor], tuple[Tensor]]:
            return lambda x: (module(x),)

        def decoder(name: str, block: nn.Module, inputs: tuple[str, ...]) -> Closure:
            level = name[-1]
            outputs = (f"x{level}", f"r{level}")
            recurrent = (f"r{level}",)
            return Closure(name, (*inputs, f"r{level}"), outputs, (block,), block, recurrent)

        return [
            Closure("stage1", ("src_sm",), ("f1",), (stage0,), first_stage),
            Closure("stage2", ("f1",), ("f2",), (stage1,), one(stage1)),
            Closure("stage3", ("f2",), ("f3",), (stage2,), one(stage2)),
            Closure("stage4", ("f3",), ("b4",), (stage3,), one(stage3)),
            Closure("stage5", ("b4",), ("f4",), (stage4,), one(stage4)),
            Closure("lraspp", ("f4",), ("a4",), (self.aspp,), one(self.aspp)),
            decoder("decode4", self.decode4, ("a4",)),
            decoder("decode3", self.decode3, ("x4", "f3", "s3")),
            decoder("decode2", self.decode2, ("x3", "f2", "s2")),
            decoder("decode1", self.decode1, ("x2", "f1", "s1")),
            Closure(
                "output",
                ("x1", "src_sm"),
                ("hidden", "coarse"),
                (self.decode0, self.project_mat),
                output,
            ),
            Closure(
                "refiner",
                ("src", "src_sm", "coarse", "hidden"),
                ("fgr", "pha"),
                (self.refiner,),
                refine,
            ),
        ]


def convs_in_graph_order(net: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The conv-order contract, stated here once: a network's `nn.Conv2d` modules in
    registration order (qualified names, a shared module once) are the published RVM graph's
    distinct conv weights in the order the graph first runs them. The weights are loaded by it
    (`model.weights`), the artifact's layout lists convs by it (`artifact.layout`) and the export
    names the graph's convs by it (`engine.export.rvm_graph.conv_sites`); reordering the
    attributes of `MattingNetwork` or of its blocks breaks it, which
    tests/model/test_architecture.py::test_conv_order_is_the_graph_order catches layer by layer.
    """
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
