"""RVM's recurrent decoder: a ConvGRU at each of four scales, then an output block.

Each block maps one frame: the state a block receives is its own GRU's hidden state from the
previous frame, and the block returns the new one. Nothing is kept inside the modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptq4vm_core.quant.site import ActivationSite


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    """2x bilinear upsampling cropped to `like`'s height and width (odd sizes lose a row)."""
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x[:, :, : like.shape[2], : like.shape[3]]


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)


class ConvGRU(nn.Module):
    """Convolutional GRU cell. x, h: [B,C,h,w]; h=None starts from zeros. Returns h' [B,C,h,w]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.ih = conv3x3(2 * channels, 2 * channels)  # reset and update gates
        self.hh = conv3x3(2 * channels, channels)  # candidate state
        self.state_in = ActivationSite()  # the state entering a frame is quantized in deployment

    def forward(self, x: Tensor, h: Tensor | None) -> Tensor:
        if h is None:
            h = torch.zeros_like(x)
        elif h.shape[2:] != x.shape[2:]:
            # A zero state of any spatial size broadcasts, as the ONNX graph allows
            # ([B,1,1,1] zeros is how ONNX users start a stream).
            h = h.expand_as(x)
        h = self.state_in(h)
        r, z = torch.sigmoid(self.ih(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.hh(torch.cat([x, r * h], dim=1)))
        h_new: Tensor = (1 - z) * h + z * c
        return h_new


class BottleneckBlock(nn.Module):
    """Coarsest scale: half of the LR-ASPP channels go through a ConvGRU, half pass by."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru = ConvGRU(channels // 2)

    def forward(self, x: Tensor, r: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = x.chunk(2, dim=1)
        r = self.gru(b, r)
        return torch.cat([a, r], dim=1), r


class UpsamplingBlock(nn.Module):
    """Upsample, join the encoder skip and the downscaled image, conv, then a half-width GRU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels + skip_channels + 3, out_channels)
        self.conv_parts = (in_channels, skip_channels, 3)  # what `conv` concatenates
        self.gru = ConvGRU(out_channels // 2)

    def forward(
        self, x: Tensor, skip: Tensor, src: Tensor, r: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        x = torch.cat([_upsample_to(x, src), skip, src], dim=1)
        a, b = F.relu(self.conv(x)).chunk(2, dim=1)
        r = self.gru(b, r)
        return torch.cat([a, r], dim=1), r


class OutputBlock(nn.Module):
    """Full (downsampled) resolution: upsample, join the image, two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels + 3, out_channels)
        self.conv1_parts = (in_channels, 3)  # what `conv1` concatenates
        self.conv2 = conv3x3(out_channels, out_channels)

    def forward(self, x: Tensor, src: Tensor) -> Tensor:
        x = torch.cat([_upsample_to(x, src), src], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


def image_pyramid(src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B,3,H,W] -> the image at 1/2, 1/4, 1/8 (2x2 mean, ceil mode, padding not counted)."""
    s1 = F.avg_pool2d(src, 2, 2, ceil_mode=True, count_include_pad=False)
    s2 = F.avg_pool2d(s1, 2, 2, ceil_mode=True, count_include_pad=False)
    s3 = F.avg_pool2d(s2, 2, 2, ceil_mode=True, count_include_pad=False)
    return s1, s2, s3
