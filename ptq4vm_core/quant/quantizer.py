"""Uniform affine fake quantizer with LSQ-learnable scales, Lp range search and QDrop.

Fake quantization of x with scale s and integer zero point z on the grid [qmin, qmax]:

    q = clamp(round(x / s) + z, qmin, qmax)      (the integers an int kernel sees)
    x_hat = (q - z) * s                          (what the float graph computes)

Rounding uses the straight-through estimator, so d x_hat / d x is 1 inside the range and 0
where clamped; the gradient reaching s is scaled by LSQ's g = 1/sqrt(N * qmax) (Esser et al.
2020, "Learned Step Size Quantization"), N being the number of elements sharing one scale.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from ptq4vm_core.quant.mode import Moded, QuantMode
from ptq4vm_core.quant.spec import QuantSpec

logger = logging.getLogger(__name__)

EPS = torch.finfo(torch.float32).eps
_SEARCH_CHUNK_ELEMENTS = 1 << 22  # elements of x times candidates evaluated at once


def round_ste(x: Tensor) -> Tensor:
    """round(x) in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


def grad_scale(t: Tensor, g: float) -> Tensor:
    """t in the forward pass; the gradient flowing back into t is multiplied by g.

    Written so that the forward value is exactly t (t + (a - a)), not t - a + a rounded.
    """
    tg = t * g
    return t.detach() + (tg - tg.detach())


def check_drop_prob(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_prob={p} must be a probability in [0, 1] (QDrop uses 0.5)")
    return float(p)


class UniformQuantizer(Moded, nn.Module):
    """Fake-quantizes a tensor; one scale per tensor or one per channel along `channel_dim`.

    `scale` (Parameter) and `zero_point` (buffer, float holding integers) have shape
    [channels]; both start as placeholders (1 and 0) and are set by `init_range` or by
    loading a state dict. `mode` (default FP: identity) and `drop_prob` (default 0) are
    plain attributes, not saved with the state.
    """

    scale: nn.Parameter
    zero_point: Tensor

    def __init__(
        self,
        spec: QuantSpec,
        channels: int = 1,
        channel_dim: int = 0,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels={channels} must be >= 1")
        if not spec.per_channel and channels != 1:
            raise ValueError(
                f"a per-tensor spec has one scale: pass channels=1, not channels={channels}"
            )
        self.spec = spec
        self.channels = channels
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.ones(channels, device=device))
        self.register_buffer("zero_point", torch.zeros(channels, device=device))
        self._mode = QuantMode.FP
        self._drop_prob = 0.0

    @property
    def drop_prob(self) -> float:
        """QDrop: probability that an element keeps its float value in CALIBRATING mode."""
        return self._drop_prob

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._drop_prob = check_drop_prob(value)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"bits={s.bits}, symmetric={s.symmetric}, per_channel={s.per_channel}, "
            f"channels={self.channels}, mode={self._mode.value}, drop_prob={self._drop_prob}"
        )

    def _dim(self, x: Tensor) -> int:
        """The channel dimension of x (checked), for a per-channel quantizer."""
        if x.dim() == 0:
            raise ValueError("a per-channel quantizer needs a tensor with a channel dimension")
        dim = self.channel_dim % x.dim()
        if x.shape[dim] != self.channels:
            raise ValueError(
                f"tensor of shape {tuple(x.shape)} has {x.shape[dim]} channels on dim "
                f"{self.channel_dim}, but this quantizer has {self.channels}"
            )
        return dim

    def broadcast(self, t: Tensor, x: Tensor) -> Tensor:
        """A [channels] tensor viewed so that it broadcasts against x."""
        if not self.spec.per_channel:
            return t
        shape = [1] * x.dim()
        shape[self._dim(x)] = self.channels
        return t.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape (channels on `channel_dim` when per-channel) -> same shape and dtype."""
        if self._mode is QuantMode.FP:
            return x
        x_q = self.fake_quantize(x)
        if self._mode is QuantMode.CALIBRATING and self._drop_prob > 0 and torch.is_grad_enabled():
            keep_fp = torch.rand_like(x) < self._drop_prob
            return torch.where(keep_fp, x, x_q)
        return x_q

    def fake_quantize(self, x: Tensor) -> Tensor:
        """(clamp(round_ste(x/s) + z, qmin, qmax) - z) * s with LSQ gradient scaling on s."""
        g = 1.0 / math.sqrt(x.numel() / self.channels * self.spec.qmax)
        s = self.broadcast(grad_scale(self.scale, g), x)
        z = self.broadcast(self.zero_point, x)
        q = torch.clamp(round_ste(x / s) + z, self.spec.qmin, self.spec.qmax)
        return (q - z) * s

    def integer(self, x: Tensor) -> Tensor:
        """The int32 grid values q of x (same shape), for export; no gradient."""
        s = self.broadcast(self.scale.detach(), x)
        z = self.broadcast(self.zero_point, x)
        q = torch.clamp(torch.round(x.detach() / s) + z, self.spec.qmin, self.spec.qmax)
        return q.to(torch.int32)

    def dequantize(self, q: Tensor) -> Tensor:
        """Integer grid values q (any shape, channels on `channel_dim`) -> float (q - z) * s."""
        s = self.broadcast(self.scale.detach(), q)
        z = self.broadcast(self.zero_point, q)
        return (q.to(s.dtype) - z) * s

    def _rows(self, x: Tensor) -> Tensor:
        """x as float32 [channels, N]: one row per scale."""
        x = x.detach().float()
        if not self.spec.per_channel:
            return x.reshape(1, -1)
        return x.movedim(self._dim(x), 0).reshape(self.channels, -1)

    def _qparams(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and zero point [channels] putting [lo, hi] (widened to include 0) on the grid."""
        qmin, qmax = self.spec.qmin, self.spec.qmax
        lo = lo.clamp(max=0.0)
        hi = hi.clamp(min=0.0)
        if self.spec.symmetric:
            # Narrow range: qmin = -qmax, so qmax steps cover the larger half-range.
            s = (torch.maximum(-lo, hi) / qmax).clamp(min=EPS)
            return s, torch.zeros_like(s)
        s = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
        return s, (qmin - torch.round(lo / s)).clamp(qmin, qmax)

    @torch.no_grad()
    def init_range(self, x: Tensor, p: float = 2.4, grid: int = 100) -> None:
        """Sets scale and zero point in place by an Lp clipping search (BRECQ/QDrop MSE observer).

        For clipping ratios r = i/grid (i = grid..1) of the per-channel (or per-tensor) min
        and max of x, keeps per channel the candidate minimising sum |x - fq(x)|^p; ties keep
        the widest range.
        x: any shape (channels on `channel_dim` when per-channel), finite values.
        """
        if grid < 1:
            raise ValueError(f"grid={grid} must be >= 1 (100 clipping ratios is the usual)")
        if p <= 0:
            raise ValueError(f"p={p} must be > 0 (2.4 is what BRECQ and QDrop use)")
        if x.numel() == 0:
            raise ValueError("cannot initialise a range from an empty tensor")
        rows = self._rows(x)
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or inf: a quantization range needs finite values")
        x_min, x_max = rows.amin(dim=1), rows.amax(dim=1)
        best_err = torch.full_like(x_min, math.inf)
        best_s, best_z = self._qparams(x_min, x_max)
        qmin, qmax = self.spec.qmin, self.spec.qmax
        # Candidates are evaluated in chunks ([k, C, N] at a time) to bound memory while
        # keeping the number of tensor ops (and their fixed cost) small.
        ratios = torch.arange(grid, 0, -1, device=rows.device, dtype=rows.dtype) / grid
        per_chunk = max(1, _SEARCH_CHUNK_ELEMENTS // rows.numel())
        for chunk in ratios.chunk(math.ceil(grid / per_chunk)):
            r = chunk[:, None]
            s, z = self._qparams(x_min * r, x_max * r)  # [k, C]
            s3, z3 = s[..., None], z[..., None]
            q = torch.clamp(torch.round(rows / s3) + z3, qmin, qmax)
            err = (rows - (q - z3) * s3).abs().pow(p).sum(dim=-1)  # [k, C]
            idx = err.argmin(dim=0, keepdim=True)  # first minimum: the widest range among ties
            err, s, z = err.gather(0, idx)[0], s.gather(0, idx)[0], z.gather(0, idx)[0]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
            best_z = torch.where(better, z, best_z)
        self.scale.copy_(best_s)
        self.zero_point.copy_(best_z)
        logger.debug(
            "range init (%d bits, %d channels): scale %.3g..%.3g",
            self.spec.bits,
            self.channels,
            best_s.min().item(),
            best_s.max().item(),
        )
