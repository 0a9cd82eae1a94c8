"""QuantConv2d: an nn.Conv2d whose input activation and weight go through fake quantizers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptq4vm_core.quant.adaround import ROUND_DOWN_ALPHA, AdaRoundQuantizer
from ptq4vm_core.quant.affine import WeightAffine
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.site import QuantActivation
from ptq4vm_core.quant.spec import LayerPolicy, OutputGrid


class QuantConv2d(nn.Module):
    """Computes conv2d(act_quantizer(x), weight_quantizer(weight)) + bias.

    Built from a float `nn.Conv2d` (whose tensors are copied: the conv is not modified) and
    the layer's `LayerPolicy`. The weight [C_out, C_in/groups, kH, kW] and bias [C_out] are
    frozen buffers; the weight quantizer has one scale per output channel (or one per tensor),
    range-initialised on the weight by the Lp search, with AdaRound rounding. The activation
    quantizer (per tensor, on the input) is a placeholder until an `ActivationObserver`
    initialises it; it is None when the policy keeps activations in float.

    All quantizers start in `QuantMode.FP`, where the layer computes exactly what the conv did;
    switch them together with `ptq4vm_core.quant.model.set_mode`.

    `parts` (channel counts) quantizes the input part by part, each part on its own grid
    (`in_parts`, one `QuantActivation` each, instead of `act_quantizer`): a conv over a
    concatenation whose tensors have unlike ranges. `output` puts a grid on the output
    (`out_site`; after a ReLU when `output.after_relu`, for a conv the model follows by one).

    `affine` (None unless GAC attached one) corrects the hard-rounded quantized weight by
    gamma and beta (see `ptq4vm_core.quant.affine`); `absorb_affine` folds it into the
    integers and scales.
    """

    weight: Tensor
    bias: Tensor | None

    def __init__(
        self,
        conv: nn.Conv2d,
        policy: LayerPolicy,
        p: float = 2.4,
        *,
        parts: tuple[int, ...] | None = None,
        output: OutputGrid | None = None,
    ) -> None:
        super().__init__()
        if policy.activation is not None and policy.activation.per_channel:
            raise ValueError(
                "per-channel activation quantization is not supported (int8 conv kernels take "
                "one input scale): use per_channel=False for the activation spec"
            )
        self.policy = policy
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = None if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)

        channels = self.out_channels if policy.weight.per_channel else 1
        device = self.weight.device
        base = UniformQuantizer(policy.weight, channels=channels, channel_dim=0, device=device)
        base.init_range(self.weight, p=p)
        self.weight_quantizer = AdaRoundQuantizer(base, self.weight)
        self.act_quantizer: UniformQuantizer | None = None
        self.parts: tuple[int, ...] | None = None
        self.in_parts: nn.ModuleList | None = None
        if policy.activation is not None and parts is not None:
            if sum(parts) != self.in_channels:
                raise ValueError(
                    f"input parts {parts} sum to {sum(parts)} channels, the conv reads "
                    f"{self.in_channels}"
                )
            self.parts = tuple(parts)
            self.in_parts = nn.ModuleList(QuantActivation(policy.activation) for _ in parts)
        elif policy.activation is not None:
            self.act_quantizer = UniformQuantizer(policy.activation, device=device)
        self.out_site = None if output is None else QuantActivation(output.spec, output.after_relu)
        self.affine: WeightAffine | None = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )

    def quantized_weight(self) -> Tensor:
        """The weight as the current mode sees it: float [C_out, C_in/groups, kH, kW].

        With a GAC correction attached, a quantized mode sees the hard-rounded integers
        corrected by it (the rounding is fixed by then; only gamma and beta learn)."""
        if self.affine is not None and self.weight_quantizer.mode is not QuantMode.FP:
            q = self.weight_quantizer.hard_integer(self.weight).to(self.weight.dtype)
            corrected: Tensor = self.affine(q, self.weight_quantizer.base)
            return corrected
        w: Tensor = self.weight_quantizer(self.weight)
        return w

    @torch.no_grad()
    def set_integer_weight(self, q: Tensor, scale: Tensor) -> None:
        """Makes the quantized modes compute exactly (q - z) * scale (z: the grid's zero point).

        q: integers, weight-shaped; scale: [channels] positive. The float weight is replaced by
        mid-bin values w = (q - z + 0.5) * scale, so floor(w / scale) = q - z with half a step
        of margin against float rounding, and the rounding is set to always round down; the
        original float weight is not kept (FP mode then computes with the mid-bin weight).
        """
        base = self.weight_quantizer.base
        if q.shape != self.weight.shape:
            raise ValueError(
                f"integer weight of shape {tuple(q.shape)} does not fit this layer's "
                f"{tuple(self.weight.shape)}"
            )
        scale = scale.to(base.scale)
        w = (q.to(scale.dtype) - base.broadcast(base.zero_point, q) + 0.5) * base.broadcast(
            scale, q
        )
        self.weight.copy_(w)
        base.scale.copy_(scale)
        self.weight_quantizer.alpha.fill_(ROUND_DOWN_ALPHA)

    def integer_weight(self) -> Tensor:
        """int32 [C_out, C_in/groups, kH, kW] grid values with hard rounding, for export."""
        return self.weight_quantizer.hard_integer(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, H, W] -> [B, C_out, H', W'], as the original conv."""
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        elif self.in_parts is not None and self.parts is not None:
            chunks = torch.split(x, list(self.parts), dim=1)
            x = torch.cat([q(c) for q, c in zip(self.in_parts, chunks, strict=True)], dim=1)
        w = self.quantized_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            out = F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        else:
            out = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.out_site is not None:
            out = self.out_site(out)
        return out
