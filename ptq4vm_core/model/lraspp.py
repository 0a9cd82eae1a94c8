"""Lite R-ASPP head: a 1x1 projection gated by global channel attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LRASPP(nn.Module):
    """[B,C_in,h,w] -> [B,C_out,h,w]: relu(conv(x)) * sigmoid(conv(mean_hw(x)))."""

    def __init__(self, in_channels: int = 960, out_channels: int = 128) -> None:
        super().__init__()
        self.aspp1 = nn.Conv2d(in_channels, out_channels, 1, bias=True)  # BN folded in
        self.aspp2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.aspp2(F.adaptive_avg_pool2d(x, 1)))
        return F.relu(self.aspp1(x)) * gate
