"""Which tensors an artifact holds: the model's convs, the policy's layers, tensor names.

Per quantized layer `n` (its qualified module name): `n.weight_q` (integer weights, see
`packing`), `n.weight_scale` float32 [C_out] (or [1] for a per-tensor grid),
`n.weight_zero_point` int32 (same shape), `n.bias` float32 [C_out] when the conv has one, and
when its input is quantized `n.act_scale` float32 [1] and `n.act_zero_point` int32 [1].
Per quantized activation site `n` (a tensor the model marks for quantization that feeds no conv
directly, e.g. RVM's GRU state; a conv's output grid `<conv>.out_site`; one part of a conv's
input `<conv>.in_parts.<k>`): `n.act_scale` and `n.act_zero_point` alike. A conv whose input is
quantized part by part has no `act_scale` of its own.
Every other entry of the model's state dict (the layers the policy keeps in float) is stored
under its own state-dict key, as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from ptq4vm_core.model.matting import convs_in_graph_order
from ptq4vm_core.model.recipe import MODEL_NAME, MODELS, known_models
from ptq4vm_core.quant.site import ActivationSite
from ptq4vm_core.quant.spec import QuantPolicy

# The models an artifact may name are the model package's (`MODELS`); re-exported here.
__all__ = [
    "ACT_SCALE",
    "ACT_ZERO_POINT",
    "BIAS",
    "MODELS",
    "MODEL_NAME",
    "WEIGHT_Q",
    "WEIGHT_SCALE",
    "WEIGHT_ZERO_POINT",
    "Architecture",
    "ConvShape",
    "architecture",
    "dtype_name",
    "known_models",
    "layer_tensor_names",
    "site_tensor_names",
]

WEIGHT_Q = "weight_q"
WEIGHT_SCALE = "weight_scale"
WEIGHT_ZERO_POINT = "weight_zero_point"
BIAS = "bias"
ACT_SCALE = "act_scale"
ACT_ZERO_POINT = "act_zero_point"


@dataclass(frozen=True)
class ConvShape:
    """One nn.Conv2d: weight [C_out, C_in/groups, kH, kW], whether it has a bias [C_out], and
    its groups (1: dense; the input channels: depthwise)."""

    weight_shape: tuple[int, ...]
    bias: bool
    groups: int = 1

    @property
    def dense(self) -> bool:
        """Whether each output sums products over every input channel (groups == 1)."""
        return self.groups == 1


@dataclass(frozen=True)
class Architecture:
    """A model's convs, activation sites and state-dict entries (shape, dtype), in
    registration order."""

    convs: dict[str, ConvShape]
    sites: tuple[str, ...]
    state: dict[str, tuple[tuple[int, ...], torch.dtype]]
    order: tuple[str, ...] = ()  # the convs and sites together, in registration order

    def quantized(self, policy: QuantPolicy) -> list[str]:
        """The convs `policy` quantizes, in registration order."""
        return [name for name in self.convs if policy.for_layer(name) is not None]

    def quantized_sites(self, policy: QuantPolicy) -> list[str]:
        """The activation sites `policy` quantizes, as `quantize_model` decides it: the sites
        the model marks (whose policy has an activation spec) and each quantized conv's
        input parts and output grid (`QuantPolicy.conv_sites`), in registration order (the
        order `named_modules` gives the quantized model)."""
        out = []
        for name in self.order:
            if name in self.convs:
                out += policy.conv_sites(name)
            elif policy.site_spec(name) is not None:
                out.append(name)
        return out

    def float_keys(self, quantized: list[str]) -> list[str]:
        """State-dict keys that do not belong to a quantized layer (stored as-is)."""
        inside = set(quantized)
        return [k for k in self.state if k.rpartition(".")[0] not in inside]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


@cache
def architecture(model: str) -> Architecture:
    """The architecture of a registered model, read off a weightless (meta) instance.

    Raises KeyError for a model name not in MODELS.
    """
    with torch.device("meta"):
        net = MODELS[model]()
    convs = {
        name: ConvShape(tuple(m.weight.shape), m.bias is not None, m.groups)
        for name, m in convs_in_graph_order(net)
    }
    sites = tuple(name for name, m in net.named_modules() if isinstance(m, ActivationSite))
    state = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    order = tuple(name for name, _ in net.named_modules() if name in convs or name in sites)
    return Architecture(convs, sites, state, order)


def layer_tensor_names(layer: str, *, bias: bool, act: bool) -> list[str]:
    """The tensor names of quantized layer `layer`, in file order."""
    names = [WEIGHT_Q, WEIGHT_SCALE, WEIGHT_ZERO_POINT]
    if bias:
        names.append(BIAS)
    if act:
        names += [ACT_SCALE, ACT_ZERO_POINT]
    return [f"{layer}.{n}" for n in names]


def site_tensor_names(site: str) -> list[str]:
    """The tensor names of quantized activation site `site`."""
    return [f"{site}.{ACT_SCALE}", f"{site}.{ACT_ZERO_POINT}"]
