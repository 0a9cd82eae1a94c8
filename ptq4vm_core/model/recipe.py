"""RVM's quantization recipe, as data: which layers stay at 8 bits, which inputs stay in float,
and the policy builder that turns a bit configuration into a `QuantPolicy`.

The quantization package knows nothing of RVM (STYLE 5): the model says how it partitions into
closures (`MattingNetwork.closures`) and how it is quantized (here); calibration applies this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache

import torch
from torch import nn

from ptq4vm_core.model.matting import MattingNetwork
from ptq4vm_core.quant.spec import LayerPolicy, QuantPolicy, parse_bits, weight_spec

MODEL_NAME = "rvm_mobilenetv3"
# The models an artifact may name (its manifest's `model`), each built weightless by its class.
MODELS: dict[str, Callable[[], nn.Module]] = {MODEL_NAME: MattingNetwork}

FIRST_LAYERS = ("backbone.features.0.0",)
LAST_LAYERS = ("project_mat", "refiner.conv3")
# The layers whose 8-bit input grids cost RVM the most: each one's activation quantizer alone in
# float lowered the QDrop W8A8 model's error against FP32 the most (benchmarks/sensitivity.py,
# docs/benchmarks/sensitivity-qdrop-w8a8.md). Their inputs fit one per-tensor grid badly:
# refiner.conv1's is a concat of covariances (~1e-3) with hidden features (~10); the box
# filter's the image, the prediction and their products; backbone.features.1's depthwise conv
# reads the stem's output (+-55); decode1.conv's concatenates features with the image. With
# `float_inputs=SENSITIVE_INPUTS` their inputs stay in float and their weights quantized: mixed
# precision, stated in the artifact's policy. The first three are cheap in float; decode1.conv,
# a 3x3 conv at half the network's resolution, is not (the engine loses ~20% of its speed), and
# without it PTQ4VM W8A8 lands just outside 3% of FP32 (docs/quantization.md): CHEAP_INPUTS is
# that trade.
CHEAP_INPUTS = (
    "refiner.conv1",
    "backbone.features.1.block.0.0",
    "refiner.box_filter",
)
SENSITIVE_INPUTS = (*CHEAP_INPUTS, "decode1.conv")


def known_models() -> list[str]:
    return sorted(MODELS)


@cache
def conv_names() -> tuple[str, ...]:
    """RVM's convolutions (qualified module names, registration order), read off a weightless
    (meta) instance."""
    with torch.device("meta"):
        net = MattingNetwork()
    return tuple(name for name, m in net.named_modules() if isinstance(m, nn.Conv2d))


def rvm_policy(
    bits: str, *, first_last_8bit: bool = True, float_inputs: tuple[str, ...] = ()
) -> QuantPolicy:
    """Every convolution quantized at `bits` ("w8a8", "w4a8", "w4a4"); the first and the last
    layers at W8A8 unless switched off, as BRECQ and QDrop do; the layers in `float_inputs`
    with their weights quantized as that says and their input activations in float."""
    w_bits, a_bits = parse_bits(bits)
    keep8 = (*FIRST_LAYERS, *LAST_LAYERS) if first_last_8bit else ()
    policy = QuantPolicy.from_bits(w_bits, a_bits, first_last_8bit=keep8)
    if not float_inputs:
        return policy
    unknown = sorted(set(float_inputs) - set(conv_names()))
    if unknown:
        raise ValueError(f"float inputs {unknown} name no convolution of {MODEL_NAME}")
    overrides = dict(policy.overrides)
    for name in float_inputs:
        weight = overrides[name].weight if name in overrides else weight_spec(w_bits)
        overrides[name] = LayerPolicy(weight=weight, activation=None)
    return replace(policy, overrides=overrides)
