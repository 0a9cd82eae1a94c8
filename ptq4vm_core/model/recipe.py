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

from ptq4vm_core.model.decoder import ConvGRU, OutputBlock, UpsamplingBlock
from ptq4vm_core.model.lraspp import LRASPP
from ptq4vm_core.model.matting import MattingNetwork, convs_in_graph_order
from ptq4vm_core.model.mobilenetv3 import ConvAct, InvertedResidual, SqueezeExcitation
from ptq4vm_core.model.refiner import DeepGuidedFilterRefiner
from ptq4vm_core.quant.spec import (
    SATURATION_SAFE_WEIGHT_BITS,
    Int8Target,
    LayerPolicy,
    OutputGrid,
    QuantPolicy,
    activation_spec,
    parse_bits,
    weight_spec,
)

MODEL_NAME = "rvm_mobilenetv3"
# The models an artifact may name (its manifest's `model`), each built weightless by its class.
MODELS: dict[str, Callable[[], nn.Module]] = {MODEL_NAME: MattingNetwork}

FIRST_LAYERS = ("backbone.features.0.0",)
# The refiner's box filter (the guided filter's mean): one 3x3 depthwise mean kernel.
BOX_FILTER = "refiner.box_filter"
# Layers whose outputs the deployed graph leaves in float (their convs run as float convs on the
# dequantized int8 operands), with the reason; figures are mean |alpha - simulation| on the
# sample clip with the qdrop W8A8 baseline, where all added grids together cost ~0.25/255.
FLOAT_OUTPUT_LAYERS = {
    "backbone.features.0.0": "the stem's outputs span about +-55; an 8-bit grid of step 0.44 "
    "on the first feature map cost ~2/255 alone",
    "refiner.box_filter": "its outputs are differenced (cov = E[xy] - E[x]E[y]), which an "
    "8-bit grid on them loses: ~0.25/255 alone",
}


def state_input(site: str) -> str | None:
    """The graph input an activation site quantizes: `decodeK.gru.state_in` is the recurrent
    state input rKi (the export's names, `engine.runtime.STATE_INPUTS`); None for any other."""
    level = site.removeprefix("decode")[:1]
    if site.startswith("decode") and site.endswith(".gru.state_in") and level.isdigit():
        return f"r{level}i"
    return None


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
    return tuple(name for name, _ in convs_in_graph_order(net))


@cache
def dense_convs() -> frozenset[str]:
    """RVM's dense convolutions (groups == 1): the ones whose int8 kernels sum products over
    input channels, pair by pair on CPUs without VNNI. The depthwise convs (groups ==
    channels) are computed widened to 16/32 bits by both runtimes and cannot saturate."""
    with torch.device("meta"):
        net = MattingNetwork()
    return frozenset(name for name, m in convs_in_graph_order(net) if m.groups == 1)


# The output grids are 8-bit at every bit configuration: what an int8 kernel writes.
OUTPUT_BITS = 8


def _convact_grids(prefix: str, block: InvertedResidual) -> dict[str, bool]:
    """Within an inverted residual: every hard-swish conv (the activation runs in float on the
    requantized output), the projection (read by the residual add, a skip tap or two convs of
    the next block), a ReLU conv whose output the SE block pools and multiplies, and the SE
    gate's second conv (read by the hard-sigmoid)."""
    grids = {}
    modules = list(block.block)
    for j, m in enumerate(modules):
        name = f"{prefix}.block.{j}"
        after = modules[j + 1] if j + 1 < len(modules) else None
        if isinstance(m, SqueezeExcitation):
            grids[f"{name}.fc2"] = False
        elif isinstance(m, ConvAct):
            act = m[1] if len(m) > 1 else None
            if isinstance(act, nn.Hardswish) or act is None:
                grids[f"{name}.0"] = False
            elif isinstance(after, SqueezeExcitation):
                grids[f"{name}.0"] = True
    return grids


@cache
def output_grids() -> dict[str, bool]:
    """The convs whose outputs the deployed graph requantizes, with whether the grid sits
    after the conv's ReLU: every conv whose output does not go (through an optional ReLU) into
    exactly one quantized conv input, which would carry the grid itself. Exceptions: the stem
    and the refiner's box filter keep float outputs (their outputs span ranges that one 8-bit
    grid loses, see FLOAT_OUTPUT_LAYERS). The exporter refuses a graph point that is not here."""
    with torch.device("meta"):
        net = MattingNetwork()
    grids: dict[str, bool] = {}
    for name, m in net.named_modules():
        if isinstance(m, InvertedResidual):
            grids.update(_convact_grids(name, m))
        elif isinstance(m, ConvAct) and name not in FIRST_LAYERS_BLOCKS:
            if len(m) > 1 and isinstance(m[1], nn.Hardswish):
                grids[f"{name}.0"] = False  # the encoder's last 1x1 conv
        elif isinstance(m, LRASPP):
            grids[f"{name}.aspp1"] = True  # relu(aspp1) * gate
            grids[f"{name}.aspp2"] = False  # sigmoid
        elif isinstance(m, ConvGRU):
            grids[f"{name}.ih"] = False  # sigmoid
            grids[f"{name}.hh"] = False  # tanh
        elif isinstance(m, UpsamplingBlock):
            grids[f"{name}.conv"] = True  # split: half to the GRU, half passed on
        elif isinstance(m, OutputBlock):
            grids[f"{name}.conv2"] = True  # the projection and the refiner read it
    for name in LAST_LAYERS:
        grids[name] = False  # float arithmetic follows (alpha, the guided filter's A)
    return grids


# The stem's ConvAct (features.0): its output stays float.
FIRST_LAYERS_BLOCKS = tuple(name.rpartition(".")[0] for name in FIRST_LAYERS)


@cache
def input_parts() -> dict[str, tuple[int, ...]]:
    """The convs over a channel concatenation, with the channels of each part: the decoder's
    upsampled features, skip features and image; the GRU's input and state; the refiner's
    covariances, variances and features. Their parts' ranges differ by up to 1e4, so each part
    gets its own grid (the runtime runs one int8 conv per part, summed)."""
    with torch.device("meta"):
        net = MattingNetwork()
    parts: dict[str, tuple[int, ...]] = {}
    for name, m in net.named_modules():
        if isinstance(m, ConvGRU):
            parts[f"{name}.ih"] = (m.channels, m.channels)
            parts[f"{name}.hh"] = (m.channels, m.channels)
        elif isinstance(m, UpsamplingBlock):
            parts[f"{name}.conv"] = m.conv_parts
        elif isinstance(m, OutputBlock | DeepGuidedFilterRefiner):
            parts[f"{name}.conv1"] = m.conv1_parts
    return parts


def rvm_policy(
    bits: str,
    *,
    first_last_8bit: bool = True,
    float_inputs: tuple[str, ...] = (),
    outputs: bool = True,
    parts: bool = True,
    target: Int8Target = Int8Target.VNNI,
) -> QuantPolicy:
    """Every convolution quantized at `bits` ("w8a8", "w4a8", "w4a4"); the first and the last
    layers at W8A8 unless switched off, as BRECQ and QDrop do; the layers in `float_inputs`
    with their weights quantized as that says and their input activations in float. With
    `outputs`, the conv outputs the deployed graph requantizes get 8-bit grids
    (`output_grids`); with `parts`, convs over concatenations quantize each part on its own
    grid (`input_parts`). Both make the policy cover every integer tensor of the deployed
    graph; switching them off is for measuring what each is worth.

    `target=Int8Target.AVX2` (CPUs without VNNI): every dense conv whose input is quantized
    (an int8 conv in the deployed graph) gets symmetric 7-bit per-channel weights wherever
    it would have more, so no pair of u8 x s8 products can saturate int16; calibration
    learns rounding, step sizes and GAC on that grid. Depthwise convs and everything else
    stay as the bits say."""
    w_bits, a_bits = parse_bits(bits)
    keep8 = (*FIRST_LAYERS, *LAST_LAYERS) if first_last_8bit else ()
    policy = QuantPolicy.from_bits(w_bits, a_bits, first_last_8bit=keep8)
    unknown = sorted(set(float_inputs) - set(conv_names()))
    if unknown:
        raise ValueError(f"float inputs {unknown} name no convolution of {MODEL_NAME}")
    overrides = dict(policy.overrides)
    for name in float_inputs:
        weight = overrides[name].weight if name in overrides else weight_spec(w_bits)
        overrides[name] = LayerPolicy(weight=weight, activation=None)
    if Int8Target(target) is Int8Target.AVX2:
        safe = weight_spec(SATURATION_SAFE_WEIGHT_BITS)
        for name in sorted(dense_convs()):
            layer = overrides.get(name, policy.default_layer)
            if layer.activation is not None and layer.weight.bits > safe.bits:
                overrides[name] = LayerPolicy(weight=safe, activation=layer.activation)
    spec = activation_spec(OUTPUT_BITS)
    grids = {c: OutputGrid(spec, after_relu) for c, after_relu in output_grids().items()}
    split = {c: p for c, p in input_parts().items() if c not in float_inputs}
    return replace(
        policy,
        overrides=overrides,
        outputs=grids if outputs else {},
        input_parts=split if parts else {},
    )
