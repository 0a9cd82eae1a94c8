"""GAC's weight correction: W' = gamma * W_q + beta per layer, kept on a deployable grid.

PTQ4VM's Global Affine Correction gives every quantized convolution two learnable scalars,
gamma (init 1) and beta (init 0), applied to its quantized (BN-folded) weight. Deployed
integer kernels take symmetric per-channel weights: integers q with one scale s_c per output
channel and zero point 0. On that form

    gamma * (q - z) * s_c + beta = (q + beta / (gamma s_c) - z) * (gamma s_c)

so gamma becomes part of the scale exactly, and beta shifts the grid of channel c by
beta / (gamma s_c) steps. A fractional shift would need a fractional zero point, which no
integer kernel takes, so the shift is rounded to whole steps, k_c = round(beta / (gamma s_c)),
and the integers clamped to the grid: what is calibrated is

    W'_c = (clamp(q + k_c, qmin, qmax) - z) * (gamma s_c)

which is exactly representable as integers clamp(q + k_c) with scale gamma s_c and the same
zero point: absorbing gamma and beta changes the stored integers and scales and adds no
operation. Rounding uses the straight-through estimator, so beta learns as if continuous.
beta is parameterised in units of the layer's mean step so one learning rate fits all layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ptq4vm_core.quant.quantizer import UniformQuantizer, round_ste


class WeightAffine(nn.Module):
    """gamma and beta of one layer. `gamma` and `beta` are scalar Parameters; `unit` (buffer,
    scalar) is the mean step of the layer's grid when the correction was attached; the shift
    is beta * unit in weight units."""

    gamma: nn.Parameter
    beta: nn.Parameter
    unit: Tensor

    def __init__(self, grid: UniformQuantizer) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((), device=grid.scale.device))
        self.beta = nn.Parameter(torch.zeros((), device=grid.scale.device))
        self.register_buffer("unit", grid.scale.detach().mean().clone())

    def extra_repr(self) -> str:
        return f"gamma={self.gamma.item():.4f}, beta={self.beta.item() * self.unit.item():.3g}"

    def scale(self, grid: UniformQuantizer) -> Tensor:
        """The corrected per-channel scale gamma * s, [channels]."""
        return self.gamma * grid.scale.detach()

    def forward(self, q: Tensor, grid: UniformQuantizer) -> Tensor:
        """q: integer grid values as float, weight-shaped -> the corrected float weight."""
        scale = grid.broadcast(self.scale(grid), q)
        zero_point = grid.broadcast(grid.zero_point, q)
        shift = round_ste(self.beta * self.unit / scale)
        q = torch.clamp(q + shift, grid.spec.qmin, grid.spec.qmax)
        return (q - zero_point) * scale

    @torch.no_grad()
    def absorbed(self, q: Tensor, grid: UniformQuantizer) -> tuple[Tensor, Tensor]:
        """(integers int32 weight-shaped, scale [channels]) such that (q' - z) * s' is exactly
        what `forward` computes for q."""
        scale = self.scale(grid)
        shift = torch.round(self.beta * self.unit / grid.broadcast(scale, q))
        q = torch.clamp(q.float() + shift, grid.spec.qmin, grid.spec.qmax)
        return q.to(torch.int32), scale.clone()
