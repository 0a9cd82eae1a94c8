"""GAC's weight correction: identity at init, gradients, exact absorption."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import (
    ActivationObserver,
    absorb_affine,
    attach_affine,
    quant_layers,
    quantize_model,
    set_mode,
)
from ptq4vm_core.quant.spec import QuantPolicy
from tests.quant.nets import TinyNet


def quantized(net: nn.Module, bits: int, images: Tensor) -> nn.Module:
    qnet = quantize_model(net, QuantPolicy(bits, bits))
    with ActivationObserver(qnet) as obs:
        qnet(images)
    obs.init_ranges()
    set_mode(qnet, QuantMode.QUANTIZED)
    return qnet


@pytest.mark.parametrize("bits", [8, 4])
def test_identity_at_init(tiny_net: TinyNet, images: Tensor, bits: int) -> None:
    qnet = quantized(tiny_net, bits, images)
    before = qnet(images)
    attach_affine(qnet)
    assert torch.equal(qnet(images), before)


@pytest.mark.parametrize("bits", [8, 4])
def test_absorption_is_exact(tiny_net: TinyNet, images: Tensor, bits: int) -> None:
    qnet = quantized(tiny_net, bits, images)
    plain = qnet(images)
    corrections = attach_affine(qnet)
    integers = {n: layer.integer_weight().clone() for n, layer in quant_layers(qnet).items()}
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for affine in corrections.values():
            affine.gamma.fill_(1 + 0.2 * (torch.rand((), generator=gen).item() - 0.5))
            affine.beta.fill_(6 * (torch.rand((), generator=gen).item() - 0.5))  # in steps
    corrected = qnet(images)
    assert not torch.equal(corrected, plain)
    assert absorb_affine(qnet) == len(corrections)
    assert all(layer.affine is None for layer in quant_layers(qnet).values())
    assert torch.equal(qnet(images), corrected)  # bit for bit: no tolerance needed
    qmax = 2 ** (bits - 1) - 1
    for name, layer in quant_layers(qnet).items():
        affine = corrections[name]
        grid = layer.weight_quantizer.base
        scale = grid.broadcast(layer.weight_quantizer.base.scale, integers[name])
        shift = torch.round(affine.beta * affine.unit / scale)
        expected = torch.clamp(integers[name] + shift, -qmax, qmax).to(torch.int32)
        assert torch.equal(layer.integer_weight(), expected)
        assert layer.integer_weight().abs().max() <= qmax  # still a symmetric int grid
        assert torch.all(layer.weight_quantizer.base.zero_point == 0)


def test_gamma_scales_the_weight_exactly(tiny_net: TinyNet, images: Tensor) -> None:
    qnet = quantized(tiny_net, 8, images)
    layer = quant_layers(qnet)["stem"]
    w = layer.quantized_weight().detach()
    attach_affine(qnet)
    assert layer.affine is not None
    with torch.no_grad():
        layer.affine.gamma.fill_(0.5)  # a power of two: the product is exact
    assert torch.equal(layer.quantized_weight(), w * 0.5)


def test_gradients_reach_gamma_and_beta(tiny_net: TinyNet, images: Tensor) -> None:
    qnet = quantized(tiny_net, 4, images)
    corrections = attach_affine(qnet)
    qnet(images).pow(2).mean().backward()
    for affine in corrections.values():
        assert affine.gamma.grad is not None
        assert affine.gamma.grad.abs() > 0
        assert affine.beta.grad is not None
        assert affine.beta.grad.abs() > 0


def test_fp_mode_ignores_the_correction(tiny_net: TinyNet, images: Tensor) -> None:
    qnet = quantized(tiny_net, 8, images)
    corrections = attach_affine(qnet)
    with torch.no_grad():
        corrections["stem"].gamma.fill_(2.0)
    set_mode(qnet, QuantMode.FP)
    assert torch.equal(qnet(images), tiny_net(images))
