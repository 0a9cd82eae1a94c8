from __future__ import annotations

import pytest
import torch
from torch import nn

from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import set_mode
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.spec import LayerPolicy, QuantPolicy, QuantSpec

W4A8 = QuantPolicy(4, 8).default_layer


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same"),
    ],
    ids=["plain", "depthwise-strided", "dilated-grouped", "reflect", "same"],
)
def test_fp_mode_equals_conv_exactly(conv: nn.Conv2d) -> None:
    qconv = QuantConv2d(conv, W4A8)
    x = torch.randn(2, conv.in_channels, 9, 11)
    assert torch.equal(qconv(x), conv(x))


def test_construction_copies_and_leaves_conv_alone() -> None:
    conv = nn.Conv2d(3, 4, 3)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    qconv = QuantConv2d(conv, W4A8)
    with torch.no_grad():
        qconv.weight.add_(1.0)
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k])
    assert qconv.act_quantizer is not None
    expected = [qconv.weight_quantizer.base.scale, qconv.weight_quantizer.alpha]
    expected.append(qconv.act_quantizer.scale)
    assert {id(p) for p in qconv.parameters()} == {id(p) for p in expected}
    assert not qconv.weight.requires_grad


def test_quantizer_shapes() -> None:
    qconv = QuantConv2d(nn.Conv2d(3, 5, 3), W4A8)
    assert qconv.weight_quantizer.base.scale.shape == (5,)
    assert qconv.weight_quantizer.alpha.shape == (5, 3, 3, 3)
    assert qconv.act_quantizer is not None
    assert qconv.act_quantizer.scale.shape == (1,)
    weight_only = QuantConv2d(nn.Conv2d(3, 5, 3), QuantPolicy(8, None).default_layer)
    assert weight_only.act_quantizer is None


def test_integer_weight_dequantizes_to_quantized_weight() -> None:
    qconv = QuantConv2d(nn.Conv2d(3, 5, 3), W4A8)
    set_mode(qconv, QuantMode.QUANTIZED)
    ints = qconv.integer_weight()
    assert ints.dtype == torch.int32
    assert int(ints.abs().max()) <= 7
    assert torch.equal(qconv.weight_quantizer.base.dequantize(ints), qconv.quantized_weight())


def test_per_channel_activation_refused() -> None:
    spec = QuantSpec(8, symmetric=False, per_channel=True)
    policy = LayerPolicy(weight=W4A8.weight, activation=spec)
    with pytest.raises(ValueError, match="per_channel=False"):
        QuantConv2d(nn.Conv2d(3, 5, 3), policy)
