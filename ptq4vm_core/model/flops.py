"""Counting a model's convolution multiply-accumulates, the "FLOPs" matting papers report.

RVM and PTQ4VM count one multiply-accumulate of a convolution as one FLOP (4.57 G for RVM
MobileNetV3 at 1920x1080, downsample 0.25). PTQ4VM's effective FLOPs of a quantized model
weight each layer's count by its bit width over 32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def conv_macs(model: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """Multiply-accumulates of every nn.Conv2d (or module with a conv's attributes, such as a
    quantized conv) of `model`, by qualified name, over one call of `run`."""
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if not hasattr(module, "kernel_size") or not hasattr(module, "groups"):
            continue

        def hook(m: nn.Module, args: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
            k_h, k_w = m.kernel_size  # type: ignore[misc]
            per_output = (m.in_channels // m.groups) * k_h * k_w  # type: ignore[operator]
            counts[name] = counts.get(name, 0) + out.numel() * int(per_output)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return counts


def effective_gflops(macs: dict[str, int], bits: dict[str, int]) -> float:
    """sum over layers of MACs x bits / 32, in G; a layer missing from `bits` counts as 32-bit."""
    return sum(n * bits.get(name, 32) / 32 for name, n in macs.items()) / 1e9
