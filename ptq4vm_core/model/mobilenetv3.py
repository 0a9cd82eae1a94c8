"""MobileNetV3-Large encoder as RVM uses it: dilated last stage, four feature maps out.

The architecture is a table of block configurations (as torchvision writes it); BatchNorm is
already folded into each convolution's weight and bias, as in the published ONNX graph, so every
convolution carries a bias and no normalisation layer remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["RE", "HS"]

# ImageNet statistics the backbone was trained with; the ONNX graph subtracts then divides.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block: in -> (expand 1x1) -> depthwise kxk -> (SE) -> project 1x1."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    squeeze: int | None  # channels of the squeeze-excitation bottleneck; None = no SE
    activation: Activation
    stride: int
    dilation: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


# MobileNetV3-Large with RVM's dilated final stage (stride 2 -> dilation 2 at block 13).
# SE widths are torchvision's _make_divisible(expanded // 4, 8).
LARGE_DILATED: tuple[BlockConfig, ...] = (
    BlockConfig(16, 3, 16, 16, None, "RE", 1, 1),
    BlockConfig(16, 3, 64, 24, None, "RE", 2, 1),
    BlockConfig(24, 3, 72, 24, None, "RE", 1, 1),
    BlockConfig(24, 5, 72, 40, 24, "RE", 2, 1),
    BlockConfig(40, 5, 120, 40, 32, "RE", 1, 1),
    BlockConfig(40, 5, 120, 40, 32, "RE", 1, 1),
    BlockConfig(40, 3, 240, 80, None, "HS", 2, 1),
    BlockConfig(80, 3, 200, 80, None, "HS", 1, 1),
    BlockConfig(80, 3, 184, 80, None, "HS", 1, 1),
    BlockConfig(80, 3, 184, 80, None, "HS", 1, 1),
    BlockConfig(80, 3, 480, 112, 120, "HS", 1, 1),
    BlockConfig(112, 3, 672, 112, 168, "HS", 1, 1),
    BlockConfig(112, 5, 672, 160, 168, "HS", 1, 2),
    BlockConfig(160, 5, 960, 160, 240, "HS", 1, 2),
    BlockConfig(160, 5, 960, 160, 240, "HS", 1, 2),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 960
# Indices into `features` whose outputs are the encoder's skip features f1, f2, f3, f4.
FEATURE_TAPS = (1, 3, 6, 16)
# Stages as [start, stop) ranges of `features`, at strides 2, 4, 8, 16 and 16 (dilated): the
# units of block-wise calibration. Stage 3 ends at the last stride-16 block before dilation.
STAGES = ((0, 2), (2, 4), (4, 7), (7, 13), (13, 17))


def _activation(kind: Activation) -> nn.Module:
    return nn.ReLU() if kind == "RE" else nn.Hardswish()


class ConvAct(nn.Sequential):
    """Convolution (BN folded into it) followed by an optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: Activation | None = None,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=True,
            )
        ]
        if activation is not None:
            layers.append(_activation(activation))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.fc2(F.relu(self.fc1(scale)))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.residual = cfg.residual
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvAct(cfg.in_channels, cfg.expanded, 1, activation=cfg.activation))
        layers.append(
            ConvAct(
                cfg.expanded,
                cfg.expanded,
                cfg.kernel,
                stride=cfg.stride,
                dilation=cfg.dilation,
                groups=cfg.expanded,
                activation=cfg.activation,
            )
        )
        if cfg.squeeze is not None:
            layers.append(SqueezeExcitation(cfg.expanded, cfg.squeeze))
        layers.append(ConvAct(cfg.expanded, cfg.out_channels, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.block(x)
        return y + x if self.residual else y


class MobileNetV3Encoder(nn.Module):
    """[B,3,H,W] RGB in [0,1] -> f1 [B,16,H/2,W/2], f2 [B,24,H/4,W/4], f3 [B,40,H/8,W/8],
    f4 [B,960,H/16,W/16] (stride stops at 16: the last stage is dilated)."""

    mean: Tensor
    std: Tensor

    def __init__(self, blocks: tuple[BlockConfig, ...] = LARGE_DILATED) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvAct(3, STEM_CHANNELS, 3, stride=2, activation="HS")]
        layers += [InvertedResidual(cfg) for cfg in blocks]
        layers.append(ConvAct(blocks[-1].out_channels, LAST_CHANNELS, 1, activation="HS"))
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def stage(self, index: int) -> nn.Sequential:
        """The blocks of stage `index` (see STAGES): a view on `features`, not a copy."""
        start, stop = STAGES[index]
        return nn.Sequential(*list(self.features)[start:stop])

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.normalize(x)
        taps: list[Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in FEATURE_TAPS:
                taps.append(x)
        f1, f2, f3, f4 = taps
        return f1, f2, f3, f4
