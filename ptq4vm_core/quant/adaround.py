"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up.

The integer of weight w is floor(w/s) + h(alpha), h the rectified sigmoid
h(alpha) = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1.
While calibrating h is soft (any value in [0, 1]); a regulariser annealed by
`TemperatureDecay` pushes it to 0 or 1; deployed, the rounding is hard: up iff alpha >= 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ptq4vm_core.quant.mode import Moded, QuantMode
from ptq4vm_core.quant.quantizer import UniformQuantizer

ZETA = 1.1
GAMMA = -0.1
# alpha that rounds down in every mode: even the soft rounding h(alpha) is exactly 0 there
# (sigmoid(-16) * 1.2 - 0.1 < 0, clamped). Used to pin stored integers (mid-bin weights).
ROUND_DOWN_ALPHA = -16.0


class AdaRoundQuantizer(Moded, nn.Module):
    """Weight fake quantizer with learnable rounding, on the grid of a range-initialised base.

    `base` supplies the grid (spec, scale [C], zero point [C], channel_dim); `alpha` is a
    Parameter shaped like the weight, initialised so that h(alpha) = frac(w/s), which makes the
    soft weight equal the float weight (up to clamping) and hard rounding round-to-nearest.
    """

    alpha: nn.Parameter

    def __init__(self, base: UniformQuantizer, weight: Tensor) -> None:
        super().__init__()
        self.base = base
        self.alpha = nn.Parameter(torch.zeros_like(weight, dtype=torch.float32))
        self._mode = QuantMode.FP
        self.init_alpha(weight)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.alpha.shape)}, mode={self._mode.value}"

    def _check(self, w: Tensor) -> None:
        if w.shape != self.alpha.shape:
            raise ValueError(
                f"weight of shape {tuple(w.shape)} does not match this quantizer's "
                f"{tuple(self.alpha.shape)}: build one AdaRoundQuantizer per weight"
            )

    @torch.no_grad()
    def init_alpha(self, weight: Tensor) -> None:
        """Sets alpha so that h(alpha) = frac(weight / s); call again after changing the scale."""
        self._check(weight)
        s = self.base.broadcast(self.base.scale, weight)
        x = weight.float() / s
        frac = x - torch.floor(x)  # in [0, 1)
        self.alpha.copy_(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))

    def soft_rounding(self) -> Tensor:
        """h(alpha) in [0, 1], shaped like the weight."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def hard_rounding(self) -> Tensor:
        """1.0 where the weight rounds up (alpha >= 0), else 0.0; shaped like the weight."""
        return (self.alpha >= 0).to(self.alpha.dtype)

    def _integer(self, w: Tensor, rounding: Tensor) -> Tensor:
        s = self.base.broadcast(self.base.scale, w)
        z = self.base.broadcast(self.base.zero_point, w)
        spec = self.base.spec
        return torch.clamp(torch.floor(w / s) + rounding + z, spec.qmin, spec.qmax)

    def forward(self, w: Tensor) -> Tensor:
        """w: the weight (alpha's shape) -> fake-quantized weight, same shape.

        FP: w; CALIBRATING: soft rounding (differentiable in alpha and scale);
        QUANTIZED: hard rounding.
        """
        if self._mode is QuantMode.FP:
            return w
        self._check(w)
        if self._mode is QuantMode.CALIBRATING:
            rounding = self.soft_rounding()
        else:
            rounding = self.hard_rounding()
        s = self.base.broadcast(self.base.scale, w)
        z = self.base.broadcast(self.base.zero_point, w)
        return (self._integer(w, rounding) - z) * s

    def hard_integer(self, w: Tensor) -> Tensor:
        """int32 grid values of w (alpha's shape) with hard rounding, for export."""
        self._check(w)
        with torch.no_grad():
            return self._integer(w.detach(), self.hard_rounding()).to(torch.int32)

    def regularizer(self, b: float) -> Tensor:
        """Scalar sum(1 - |2 h(alpha) - 1|^b): 0 when every h is 0 or 1, largest at h = 1/2."""
        return (1 - (2 * self.soft_rounding() - 1).abs().pow(b)).sum()


class TemperatureDecay:
    """AdaRound/BRECQ's linear decay of the regulariser exponent b over `total_steps`.

    Returns None during the first `warmup` fraction of the steps (no regularisation yet),
    then b falling linearly from `start_b` (20) to `end_b` (2) at the last step.
    """

    def __init__(
        self,
        total_steps: int,
        warmup: float = 0.2,
        start_b: float = 20.0,
        end_b: float = 2.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup={warmup} must be a fraction in [0, 1), e.g. 0.2")
        if start_b < end_b or end_b <= 0:
            raise ValueError(f"need start_b >= end_b > 0, got start_b={start_b}, end_b={end_b}")
        self.total_steps = total_steps
        self.warmup_steps = warmup * total_steps
        self.start_b = start_b
        self.end_b = end_b

    def __call__(self, step: int) -> float | None:
        """b at `step` (0-based; `total_steps` gives end_b), or None during the warm-up."""
        if step < self.warmup_steps:
            return None
        rel = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.end_b + (self.start_b - self.end_b) * max(0.0, 1.0 - rel)
