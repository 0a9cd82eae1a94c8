"""A tiny conv net for the quant tests: plain, depthwise and dilated convs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TinyNet(nn.Module):
    """[B,3,H,W] -> [B,4,H,W]: conv, depthwise conv, dilated conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 3, padding=2, dilation=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(F.relu(self.stem(x))))


CONV_NAMES = ("stem", "body.0", "head")
