from __future__ import annotations

import math

import pytest
import torch

from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.spec import QuantSpec

SYM4 = QuantSpec(4, symmetric=True, per_channel=False)
ASYM8 = QuantSpec(8, symmetric=False, per_channel=False)


def make(spec: QuantSpec, scale: float, zero_point: float = 0.0) -> UniformQuantizer:
    q = UniformQuantizer(spec)
    with torch.no_grad():
        q.scale.fill_(scale)
        q.zero_point.fill_(zero_point)
    q.mode = QuantMode.QUANTIZED
    return q


def test_placeholders_exist_from_construction() -> None:
    q = UniformQuantizer(QuantSpec(8, symmetric=True, per_channel=True), channels=5)
    assert q.scale.shape == (5,)
    assert q.zero_point.shape == (5,)
    assert set(q.state_dict()) == {"scale", "zero_point"}
    assert q.mode is QuantMode.FP


def test_fp_mode_is_identity() -> None:
    x = torch.randn(10)
    q = make(SYM4, 0.3)
    q.mode = QuantMode.FP
    assert q(x) is x


def test_mode_accepts_only_known_modes() -> None:
    q = UniformQuantizer(SYM4)
    q.mode = "quantized"  # type: ignore[assignment]
    assert q.mode is QuantMode.QUANTIZED
    with pytest.raises(ValueError, match="deploy"):
        q.mode = "deploy"  # type: ignore[assignment]


def test_round_trip_on_grid_is_exact() -> None:
    q = make(ASYM8, 0.0371, zero_point=37.0)
    ints = torch.arange(ASYM8.qmin, ASYM8.qmax + 1, dtype=torch.float32)
    x = (ints - 37.0) * 0.0371
    assert torch.equal(q(x), x)
    assert torch.equal(q.integer(x), ints.to(torch.int32))


def test_error_inside_range_at_most_half_a_step() -> None:
    s, z = 0.05, 100.0
    q = make(ASYM8, s, zero_point=z)
    lo, hi = (ASYM8.qmin - z) * s, (ASYM8.qmax - z) * s
    x = torch.linspace(lo, hi, 10_001)
    assert (q(x) - x).abs().max().item() <= s / 2 + 1e-6


def test_clamps_outside_range() -> None:
    q = make(SYM4, 0.5)
    out = q(torch.tensor([-100.0, -3.6, 3.6, 100.0]))
    assert out.tolist() == [-3.5, -3.5, 3.5, 3.5]


def test_ste_gradient_of_input() -> None:
    q = make(SYM4, 0.5)  # range [-3.5, 3.5]
    x = torch.tensor([-3.0, -0.7, 0.1, 1.26, 2.9, -5.0, 4.5, 50.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_lsq_scale_gradient_on_hand_example() -> None:
    s = 0.5
    q = make(SYM4, s)
    x = torch.tensor([0.3, -0.7, 1.26, 10.0])
    q(x).sum().backward()
    # d x_hat / d s: round(x/s) - x/s inside the range, qmax (or qmin) - z where clamped.
    x_over_s = [0.6, -1.4, 2.52]
    analytic = sum(round(v) - v for v in x_over_s) + SYM4.qmax
    g = 1 / math.sqrt(x.numel() * SYM4.qmax)
    assert q.scale.grad is not None
    assert q.scale.grad.item() == pytest.approx(analytic * g, rel=1e-5)


def test_lsq_gradient_scale_counts_elements_per_channel() -> None:
    spec = QuantSpec(4, symmetric=True, per_channel=True)
    q = UniformQuantizer(spec, channels=2, channel_dim=1)
    q.mode = QuantMode.QUANTIZED
    x = torch.tensor([[0.3, 0.3], [0.3, 0.3], [0.3, 0.3]])  # 3 elements per channel
    q(x).sum().backward()
    g = 1 / math.sqrt(3 * spec.qmax)
    assert q.scale.grad is not None
    expected = 3 * (round(0.3) - 0.3) * g
    assert q.scale.grad.tolist() == pytest.approx([expected, expected], rel=1e-5)


def test_integer_values() -> None:
    q = make(ASYM8, 0.1, zero_point=10.0)
    out = q.integer(torch.tensor([-5.0, -0.96, 0.0, 0.34, 100.0]))
    assert out.dtype == torch.int32
    assert out.tolist() == [0, 0, 10, 13, 255]
    assert torch.equal(q.dequantize(out), q(torch.tensor([-5.0, -0.96, 0.0, 0.34, 100.0])))


def _mse(q: UniformQuantizer, x: torch.Tensor) -> float:
    return (q(x) - x).pow(2).mean().item()


@pytest.mark.parametrize("symmetric", [True, False])
def test_lp_search_beats_min_max_on_heavy_tails(symmetric: bool) -> None:
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20_000,))
    spec = QuantSpec(4, symmetric=symmetric, per_channel=False)
    minmax, lp = UniformQuantizer(spec), UniformQuantizer(spec)
    minmax.init_range(x, grid=1)  # ratio 1 only: the plain min/max range
    lp.init_range(x, p=2.4)
    for q in (minmax, lp):
        q.mode = QuantMode.QUANTIZED
    assert lp.scale.item() < minmax.scale.item()
    assert _mse(lp, x) < 0.7 * _mse(minmax, x)


def test_per_channel_scales_follow_channel_ranges() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 3, 3) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1, 1)
    q = UniformQuantizer(QuantSpec(8, symmetric=True, per_channel=True), channels=3)
    q.init_range(w)
    s = q.scale.detach()
    assert s[0] < s[1] < s[2]
    assert (s[2] / s[0]).item() > 1000
    q.mode = QuantMode.QUANTIZED
    err = (q(w) - w).flatten(1).norm(dim=1)
    rel = (err / w.flatten(1).norm(dim=1)).max().item()
    assert rel < 0.01


def test_per_channel_on_other_dim() -> None:
    x = torch.randn(5, 2) * torch.tensor([1.0, 50.0])
    q = UniformQuantizer(QuantSpec(8, symmetric=False, per_channel=True), 2, channel_dim=-1)
    q.init_range(x)
    assert q.scale[1] > 10 * q.scale[0]
    with pytest.raises(ValueError, match="has 5 channels"):
        q.init_range(x.T)


def test_symmetric_zero_point_is_exactly_zero() -> None:
    w = torch.rand(4, 8) + 0.5  # all positive: an asymmetric grid would shift
    q = UniformQuantizer(QuantSpec(4, symmetric=True, per_channel=True), channels=4)
    q.init_range(w)
    assert torch.equal(q.zero_point, torch.zeros(4))


def test_asymmetric_zero_point_is_an_integer_in_range() -> None:
    x = torch.randn(1000) * 2 + 1
    q = UniformQuantizer(ASYM8)
    q.init_range(x)
    z = q.zero_point.item()
    assert z == round(z)
    assert 0 < z < 255
    relu = UniformQuantizer(ASYM8)
    relu.init_range(x.clamp(min=0))
    assert relu.zero_point.item() == 0


def test_init_range_refuses_bad_input() -> None:
    q = UniformQuantizer(ASYM8)
    with pytest.raises(ValueError, match="NaN"):
        q.init_range(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        q.init_range(torch.empty(0))
    with pytest.raises(ValueError, match="channels=1"):
        UniformQuantizer(ASYM8, channels=3)


def _calibrating(drop_prob: float) -> UniformQuantizer:
    q = UniformQuantizer(ASYM8)
    q.init_range(torch.randn(1000))
    q.mode = QuantMode.CALIBRATING
    q.drop_prob = drop_prob
    return q


def test_qdrop_extremes() -> None:
    x = torch.randn(10_000)
    all_fp = _calibrating(1.0)
    assert torch.equal(all_fp(x), x)
    all_fp.mode = QuantMode.QUANTIZED  # deployed: never dropped
    assert torch.equal(all_fp(x), all_fp.fake_quantize(x))
    full = _calibrating(0.0)
    quantized = full(x)
    full.mode = QuantMode.QUANTIZED
    assert torch.equal(quantized, full(x))


def test_qdrop_half_keeps_about_half_in_float() -> None:
    torch.manual_seed(0)
    x = torch.randn(20_000)
    q = _calibrating(0.5)
    out = q(x)
    fq = q.fake_quantize(x)
    differs = fq != x
    kept_fp = (out == x) & differs
    took_q = (out == fq) & differs
    assert bool((kept_fp | took_q)[differs].all())
    assert kept_fp[differs].float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_qdrop_only_while_grad_enabled() -> None:
    x = torch.randn(1000)
    q = _calibrating(1.0)
    with torch.no_grad():
        assert torch.equal(q(x), q.fake_quantize(x))


def test_drop_prob_validated() -> None:
    q = UniformQuantizer(ASYM8)
    with pytest.raises(ValueError, match=r"drop_prob=1\.5"):
        q.drop_prob = 1.5
