"""Activation sites: tensors a model asks to have quantized that feed no convolution directly.

A model marks such a tensor by passing it through an `ActivationSite` (an identity in float);
`quantize_model` swaps each site for a `QuantActivation`. RVM marks the ConvGRU hidden state
as it enters each frame, so the recurrent state is low-bit in deployment like any activation.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.spec import QuantSpec


class ActivationSite(nn.Identity):
    """Identity that marks its input as an activation to quantize."""


class QuantActivation(nn.Module):
    """Fake-quantizes a tensor [B,C,H,W] per tensor with `spec` (asymmetric activations).

    `after_relu`: the tensor is a conv's output that the model passes through a ReLU next;
    the grid is on the ReLU's output (as the deployed graph has it), so the site applies the
    ReLU first, in every mode (observers then see what the grid covers); the model's own ReLU
    after it changes nothing, so FP mode still computes the float model."""

    def __init__(self, spec: QuantSpec, after_relu: bool = False) -> None:
        super().__init__()
        if spec.per_channel:
            raise ValueError("activation sites are quantized per tensor: use per_channel=False")
        self.act_quantizer = UniformQuantizer(spec)
        self.after_relu = after_relu

    def forward(self, x: Tensor) -> Tensor:
        if self.after_relu:
            x = F.relu(x)
        y: Tensor = self.act_quantizer(x)
        return y
