from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ptq4vm_core.quant.adaround import AdaRoundQuantizer, TemperatureDecay
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.spec import QuantSpec


def make(bits: int = 4, symmetric: bool = True) -> tuple[AdaRoundQuantizer, Tensor]:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    base = UniformQuantizer(QuantSpec(bits, symmetric, per_channel=True), channels=6)
    base.init_range(w)
    return AdaRoundQuantizer(base, w), w


def grid(q: AdaRoundQuantizer, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """w/s, zero point and scale, broadcast against w."""
    s = q.base.broadcast(q.base.scale.detach(), w)
    z = q.base.broadcast(q.base.zero_point, w)
    return w / s, z, s


def test_alpha_init_matches_fractional_part() -> None:
    q, w = make()
    x, _, _ = grid(q, w)
    assert q.alpha.shape == w.shape
    assert torch.allclose(q.soft_rounding(), x - x.floor(), atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_soft_forward_equals_weight_up_to_clamping(symmetric: bool) -> None:
    q, w = make(symmetric=symmetric)
    q.mode = QuantMode.CALIBRATING
    x, z, s = grid(q, w)
    spec = q.base.spec
    expected = (torch.clamp(x + z, spec.qmin, spec.qmax) - z) * s
    assert torch.allclose(q(w), expected, atol=1e-5)
    clipped = (x + z < spec.qmin) | (x + z > spec.qmax)
    assert torch.allclose(q(w)[~clipped], w[~clipped], atol=1e-5)


def test_hard_rounding_rounds_up_exactly_where_alpha_nonnegative() -> None:
    q, w = make(bits=8)
    with torch.no_grad():
        q.alpha.copy_(torch.randn_like(w))
    x, z, s = grid(q, w)
    ints = q.hard_integer(w)
    assert ints.dtype == torch.int32
    inside = (x.floor() + z > q.base.spec.qmin) & (x.floor() + 1 + z < q.base.spec.qmax)
    up = ints.float() - x.floor() - z
    assert torch.equal(up[inside], (q.alpha >= 0).float()[inside])
    q.mode = QuantMode.QUANTIZED
    assert torch.equal(q(w), (ints.float() - z) * s)


def test_hard_rounding_at_init_is_round_to_nearest() -> None:
    q, w = make()
    q.mode = QuantMode.QUANTIZED
    q.base.mode = QuantMode.QUANTIZED
    assert torch.allclose(q(w), q.base(w), atol=1e-6)


def test_fp_mode_passes_weight_through() -> None:
    q, w = make()
    assert q(w) is w


def test_soft_forward_is_differentiable_in_alpha() -> None:
    q, w = make()
    q.mode = QuantMode.CALIBRATING
    q(w).pow(2).sum().backward()
    assert q.alpha.grad is not None
    assert q.alpha.grad.abs().sum() > 0


def test_shape_mismatch_refused() -> None:
    q, w = make()
    q.mode = QuantMode.QUANTIZED
    with pytest.raises(ValueError, match="does not match"):
        q(w[:3])


def _set_h(q: AdaRoundQuantizer, h: Tensor) -> None:
    """Sets alpha so that the rectified sigmoid equals h (h in (0, 1))."""
    with torch.no_grad():
        q.alpha.copy_(torch.logit((h + 0.1) / 1.2).expand_as(q.alpha))


def test_regularizer_hand_cases() -> None:
    q, w = make()
    n = w.numel()
    with torch.no_grad():
        q.alpha.fill_(10.0)  # h clamps to 1: already binary
    assert q.regularizer(2.0).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        q.alpha.fill_(0.0)  # h = 0.5: 1 - 0^b = 1 per weight
    assert q.regularizer(20.0).item() == pytest.approx(n)
    _set_h(q, torch.tensor(0.75))  # |2h-1| = 0.5
    assert q.regularizer(2.0).item() == pytest.approx(0.75 * n, rel=1e-4)
    assert q.regularizer(1.0).item() == pytest.approx(0.5 * n, rel=1e-4)


def test_temperature_decay_schedule() -> None:
    decay = TemperatureDecay(total_steps=100)
    assert decay(0) is None
    assert decay(19) is None
    assert decay(20) == pytest.approx(20.0)
    assert decay(60) == pytest.approx(11.0)
    assert decay(100) == pytest.approx(2.0)


def test_temperature_decay_validation() -> None:
    with pytest.raises(ValueError, match="warmup"):
        TemperatureDecay(100, warmup=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        TemperatureDecay(0)
