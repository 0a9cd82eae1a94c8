from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import (
    ActivationObserver,
    mode,
    quant_layers,
    quantize_model,
    set_drop_prob,
    set_mode,
)
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.spec import QuantPolicy
from tests.quant.nets import CONV_NAMES, TinyNet


def calibrated(net: nn.Module, policy: QuantPolicy, images: Tensor) -> nn.Module:
    qnet = quantize_model(net, policy)
    with ActivationObserver(qnet) as obs:
        qnet(images)
    obs.init_ranges()
    return qnet


def rel_error(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_original_untouched_and_fp_mode_exact(tiny_net: TinyNet, images: Tensor) -> None:
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    expected = tiny_net(images)
    qnet = quantize_model(tiny_net, QuantPolicy(4, 4))
    assert qnet is not tiny_net
    assert list(quant_layers(qnet)) == list(CONV_NAMES)
    assert all(type(m) is nn.Conv2d for n, m in tiny_net.named_modules() if n in CONV_NAMES)
    assert torch.equal(qnet(images), expected)
    set_mode(qnet, QuantMode.QUANTIZED)
    qnet(images)
    for k, v in tiny_net.state_dict().items():
        assert torch.equal(v, before[k])


def test_keep_fp_and_overrides(tiny_net: TinyNet) -> None:
    policy = QuantPolicy.from_bits(4, 4, ("stem",), keep_fp=frozenset({"head"}))
    qnet = quantize_model(tiny_net, policy)
    layers = quant_layers(qnet)
    assert list(layers) == ["stem", "body.0"]
    assert layers["stem"].policy.weight.bits == 8
    assert type(qnet.get_submodule("head")) is nn.Conv2d


def test_unknown_policy_names_refused(tiny_net: TinyNet) -> None:
    with pytest.raises(ValueError, match="'stme'"):
        quantize_model(tiny_net, QuantPolicy.from_bits(4, 4, ("stme",)))


def test_shared_conv_replaced_everywhere() -> None:
    conv = nn.Conv2d(2, 2, 1)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    qnet = quantize_model(net, QuantPolicy(8, 8))
    assert isinstance(qnet.get_submodule("0"), QuantConv2d)
    assert qnet.get_submodule("0") is qnet.get_submodule("2")
    single = quantize_model(conv, QuantPolicy(8, 8))
    assert isinstance(single, QuantConv2d)


def test_quantized_mode_error_by_bits(tiny_net: TinyNet, images: Tensor) -> None:
    expected = tiny_net(images)
    errors = {}
    for bits in (8, 4):
        qnet = calibrated(tiny_net, QuantPolicy(bits, bits), images)
        set_mode(qnet, QuantMode.QUANTIZED)
        errors[bits] = rel_error(qnet(images), expected)
    assert errors[8] < 0.02
    assert errors[4] > errors[8]


def test_mode_context_restores_even_on_error(tiny_net: TinyNet) -> None:
    qnet = quantize_model(tiny_net, QuantPolicy(8, 8))
    layer = quant_layers(qnet)["stem"]
    layer.weight_quantizer.mode = QuantMode.CALIBRATING
    seen = []

    def fail() -> None:
        with mode(qnet, QuantMode.QUANTIZED):
            seen.append(layer.act_quantizer.mode if layer.act_quantizer else None)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert seen == [QuantMode.QUANTIZED]
    assert layer.weight_quantizer.mode is QuantMode.CALIBRATING
    assert layer.act_quantizer is not None
    assert layer.act_quantizer.mode is QuantMode.FP


def test_qdrop_through_the_model(tiny_net: TinyNet, images: Tensor) -> None:
    qnet = calibrated(tiny_net, QuantPolicy(4, 4), images)
    set_mode(qnet, QuantMode.CALIBRATING)
    set_drop_prob(qnet, 1.0)
    soft_weights_only = qnet(images)
    with mode(qnet, QuantMode.FP):
        fp = qnet(images)
    # Soft AdaRound weights start at the float weights up to clamping, so activations that
    # all stay in float leave the output close to the float model's.
    assert rel_error(soft_weights_only, fp) < 0.1
    set_drop_prob(qnet, 0.0)
    with torch.no_grad():
        no_drop_eval = qnet(images)
    assert torch.equal(qnet(images), no_drop_eval)
    assert rel_error(no_drop_eval, fp) > rel_error(soft_weights_only, fp)
    with pytest.raises(ValueError, match="drop_prob"):
        set_drop_prob(qnet, -0.1)


def test_state_dict_round_trip_is_bit_identical(tiny_net: TinyNet, images: Tensor) -> None:
    policy = QuantPolicy.from_bits(4, 4, ("stem", "head"))
    qnet = calibrated(tiny_net, policy, images)
    with torch.no_grad():  # stand-in for a reconstruction run
        for layer in quant_layers(qnet).values():
            layer.weight_quantizer.alpha.add_(torch.randn_like(layer.weight_quantizer.alpha))
            layer.weight_quantizer.base.scale.mul_(1.05)
    buffer = io.BytesIO()
    torch.save(qnet.state_dict(), buffer)
    buffer.seek(0)
    fresh = quantize_model(tiny_net, policy)
    fresh.load_state_dict(torch.load(buffer))
    for net in (qnet, fresh):
        set_mode(net, QuantMode.QUANTIZED)
    assert torch.equal(fresh(images), qnet(images))
    for name, layer in quant_layers(fresh).items():
        assert torch.equal(layer.integer_weight(), quant_layers(qnet)[name].integer_weight())


def test_observer_ranges_cover_observed_data(tiny_net: TinyNet, images: Tensor) -> None:
    qnet = quantize_model(tiny_net, QuantPolicy(8, 8))
    set_mode(qnet, QuantMode.QUANTIZED)
    inputs: dict[str, list[Tensor]] = {}
    layers = quant_layers(qnet)
    with ActivationObserver(qnet, max_elements=500) as obs:
        for name, layer in layers.items():
            assert layer.weight_quantizer.mode is QuantMode.FP
            layer.register_forward_pre_hook(
                lambda _m, args, name=name: inputs.setdefault(name, []).append(args[0])
            )
        assert torch.equal(qnet(images), tiny_net(images))
    assert obs.init_ranges() == list(CONV_NAMES)
    for name, layer in layers.items():
        assert layer.weight_quantizer.mode is QuantMode.QUANTIZED  # restored
        act = layer.act_quantizer
        assert act is not None
        assert act._forward_pre_hooks == {}
        x = torch.cat([t.flatten() for t in inputs[name]])
        assert obs.captured(name).numel() == 502  # sample plus exact min and max
        lo = ((act.spec.qmin - act.zero_point) * act.scale).item()
        hi = ((act.spec.qmax - act.zero_point) * act.scale).item()
        assert lo <= 0.0 <= hi
        assert lo <= x.quantile(0.001).item()
        assert hi >= x.quantile(0.999).item()
        assert rel_error(act(x), x) < 0.01


class Twice(nn.Module):
    """Calls the same conv twice per forward, on inputs in [0,1] and in [10,11]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.conv(x + 10.0)


def test_observer_captures_every_call() -> None:
    qnet = quantize_model(Twice(), QuantPolicy(8, 8))
    with ActivationObserver(qnet) as obs:
        qnet(torch.rand(1, 1, 8, 8))
    obs.init_ranges()
    assert obs.calls("conv") == 2
    assert obs.captured("conv").max().item() > 10.0
    assert obs.captured("conv").min().item() < 1.0
    act = quant_layers(qnet)["conv"].act_quantizer
    assert act is not None
    hi = ((act.spec.qmax - act.zero_point) * act.scale).item()
    assert hi >= 10.9


def test_observer_name_validation(tiny_net: TinyNet) -> None:
    qnet = quantize_model(tiny_net, QuantPolicy(8, None))
    with pytest.raises(ValueError, match="keep float activations"):
        ActivationObserver(qnet, names=["stem"])
    with pytest.raises(ValueError, match="'nope'"):
        ActivationObserver(qnet, names=["nope"])
    assert ActivationObserver(qnet).names == []


def test_observer_skips_layers_that_never_ran(tiny_net: TinyNet) -> None:
    qnet = quantize_model(tiny_net, QuantPolicy(8, 8))
    with ActivationObserver(qnet, names=["stem", "head"]) as obs:
        qnet.get_submodule("stem")(torch.rand(1, 3, 4, 4))
    assert obs.init_ranges() == ["stem"]
