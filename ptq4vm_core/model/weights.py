"""Load the published RVM ONNX weights into `MattingNetwork`.

The ONNX file is read as data, not converted: its Conv nodes, in graph (execution) order, are
matched one to one with the network's convolutions in registration order, and every pair is
checked (weight shape, bias, stride, padding, dilation, groups) before any weight is copied. A
file that does not match the architecture is refused with the first mismatch named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ptq4vm_core.model.matting import MattingNetwork, convs_in_graph_order

logger = logging.getLogger(__name__)


class WeightsError(Exception):
    """The ONNX file cannot be loaded into the architecture."""


@dataclass(frozen=True)
class OnnxConv:
    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def read_onnx_convs(path: Path) -> list[OnnxConv]:
    """Distinct convolutions of an ONNX graph in execution order (a shared weight counts once)."""
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError, OSError, ... depending on the damage
        raise WeightsError(f"cannot read ONNX model {path}: {exc}") from exc
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs: list[OnnxConv] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] in seen:
            continue
        seen.add(node.input[1])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise WeightsError(f"{node.name or node.output[0]}: asymmetric padding {pads}")
        if node.input[1] not in inits:
            raise WeightsError(f"Conv weight {node.input[1]!r} is not an initializer")
        bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        convs.append(
            OnnxConv(
                name=node.input[1],
                weight=inits[node.input[1]],
                bias=bias,
                stride=tuple(attrs.get("strides", [1, 1])),  # type: ignore[arg-type]
                padding=(pads[0], pads[1]),
                dilation=tuple(attrs.get("dilations", [1, 1])),  # type: ignore[arg-type]
                groups=int(attrs.get("group", 1)),
            )
        )
    return convs


def _check_pair(index: int, module_name: str, conv: nn.Conv2d, src: OnnxConv) -> None:
    expected = {
        "weight shape": tuple(conv.weight.shape),
        "bias": conv.bias is not None,
        "stride": tuple(conv.stride),
        "padding": tuple(conv.padding),  # type: ignore[arg-type]
        "dilation": tuple(conv.dilation),
        "groups": conv.groups,
    }
    actual = {
        "weight shape": tuple(src.weight.shape),
        "bias": src.bias is not None,
        "stride": src.stride,
        "padding": src.padding,
        "dilation": src.dilation,
        "groups": src.groups,
    }
    for key, value in expected.items():
        if actual[key] != value:
            raise WeightsError(
                f"convolution #{index} ({module_name} <- ONNX {src.name!r}): {key} expected "
                f"{value}, file has {actual[key]}"
            )


def load_rvm_from_onnx(path: str | Path) -> MattingNetwork:
    """Build `MattingNetwork` with the weights of the RVM MobileNetV3 ONNX file at `path`.

    Returns the network in eval mode with gradients disabled on its parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights not found: {path} (run `ptq4vm fetch`)")
    convs = read_onnx_convs(path)
    model = MattingNetwork()
    modules = convs_in_graph_order(model)
    if len(modules) != len(convs):
        raise WeightsError(
            f"{path} has {len(convs)} distinct convolutions, the architecture {len(modules)}"
        )
    for index, ((name, conv), src) in enumerate(zip(modules, convs, strict=True)):
        _check_pair(index, name, conv, src)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(src.weight.copy()))
            if conv.bias is not None and src.bias is not None:
                conv.bias.copy_(torch.from_numpy(src.bias.copy()))
    logger.debug("loaded %d convolutions from %s", len(convs), path)
    model.eval()
    model.requires_grad_(False)
    return model
