"""Deep Guided Filter refiner: lifts the low-resolution prediction back to full resolution.

The network predicts at the downsampled resolution; the refiner fits a local linear model
y = A x + b between the (downsampled) image x and the prediction y, and applies it to the
full-resolution image, so edges follow the real image instead of a blurred upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DeepGuidedFilterRefiner(nn.Module):
    def __init__(self, hidden_channels: int = 16) -> None:
        super().__init__()
        # A fixed 3x3 mean filter per channel, stored as a depthwise convolution.
        self.box_filter = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.conv1 = nn.Conv2d(4 * 2 + hidden_channels, hidden_channels, 1, bias=True)
        self.conv1_parts = (4, 4, hidden_channels)  # cov_xy, var_x, the decoder's features
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, 1, bias=True)
        self.conv3 = nn.Conv2d(hidden_channels, 4, 1, bias=True)

    def forward(
        self, fine_src: Tensor, base_src: Tensor, base_out: Tensor, base_hidden: Tensor
    ) -> Tensor:
        """fine_src [B,3,H,W], base_src [B,3,h,w] in [0,1]; base_out [B,4,h,w] (foreground
        residual, alpha); base_hidden [B,16,h,w] -> refined [B,4,H,W] (not yet clamped)."""
        fine_x = torch.cat([fine_src, fine_src.mean(1, keepdim=True)], dim=1)
        base_x = torch.cat([base_src, base_src.mean(1, keepdim=True)], dim=1)
        base_y = base_out

        mean_x = self.box_filter(base_x)
        mean_y = self.box_filter(base_y)
        cov_xy = self.box_filter(base_x * base_y) - mean_x * mean_y
        var_x = self.box_filter(base_x * base_x) - mean_x * mean_x

        h = F.relu(self.conv1(torch.cat([cov_xy, var_x, base_hidden], dim=1)))
        A = self.conv3(F.relu(self.conv2(h)))
        b = mean_y - A * mean_x

        size = fine_src.shape[2:]
        A = F.interpolate(A, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return A * fine_x + b
