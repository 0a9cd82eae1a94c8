"""Model-agnostic post-training quantization primitives.

Specs and policies (`spec`), fake quantizers (`quantizer`, `adaround`), the quantized conv
(`modules`), GAC's weight correction (`affine`) and model wrapping (`model`). The mode
context manager is `ptq4vm_core.quant.model.mode`; it is not re-exported here, where its
name would hide the `ptq4vm_core.quant.mode` module.
"""

from ptq4vm_core.quant.adaround import AdaRoundQuantizer, TemperatureDecay
from ptq4vm_core.quant.affine import WeightAffine
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import (
    ActivationObserver,
    absorb_affine,
    attach_affine,
    quant_layers,
    quantize_model,
    set_drop_prob,
    set_mode,
)
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.spec import Bits, LayerPolicy, QuantPolicy, QuantSpec, parse_bits

__all__ = [
    "ActivationObserver",
    "AdaRoundQuantizer",
    "Bits",
    "LayerPolicy",
    "QuantConv2d",
    "QuantMode",
    "QuantPolicy",
    "QuantSpec",
    "TemperatureDecay",
    "UniformQuantizer",
    "WeightAffine",
    "absorb_affine",
    "attach_affine",
    "parse_bits",
    "quant_layers",
    "quantize_model",
    "set_drop_prob",
    "set_mode",
]
