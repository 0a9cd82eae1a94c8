"""The artifact's quantization written into the graph as QuantizeLinear/DequantizeLinear pairs.

What the artifact calibrated, carried exactly:

* weights: the stored integers as an int8 initializer (W4 values lie in [-7, 7], so they are
  exact on the int8 grid), DequantizeLinear per output channel (axis 0, the artifact's
  scales, zero point 0): what ONNX Runtime's symmetric int8 conv kernels take;
* each quantized conv's input: QuantizeLinear/DequantizeLinear on uint8 with the artifact's
  scale and zero point. An 8-bit grid is uint8 itself; a b-bit grid (b < 8) is the sub-range
  [0, 2^b - 1] of uint8, enforced by a Clip to [(0 - z) s, (2^b - 1 - z) s] before the
  QuantizeLinear (clamping before rounding equals clamping after it on this grid), so the
  integers the kernel sees are exactly the artifact's b-bit codes;
* the recurrent-state sites: the same pair on r1i..r4i;
* biases: int32 at scale s_x * s_w (what a QLinearConv adds to its int32 accumulator),
  rounded to nearest: at most half an accumulator step from the float bias.

* each part of a conv over a concatenation that the artifact quantizes part by part
  (`<conv>.in_parts.<k>`): the pair on that Concat input, the part's own grid; such a conv
  has a float bias (no single input scale), and OpenVINO's form splits it into one int8 conv
  per part (`openvino_graph.split_concat_convs`);
* each conv output grid (`<conv>.out_site`): the pair on the conv's output, or on the ReLU
  that follows it when the grid sits after the ReLU.

What the int8 kernels need beyond that: a QLinearConv writes uint8, so the output of each
int8 conv must be on a grid. Where the conv's output goes (through an optional ReLU whose
zero point is 0) straight into one quantized input, that input's grid is the output grid.
Everywhere else (residual sums, hard-swish, gates, splits) the artifact's policy carries an
output grid, learned by calibration like every other: the exporter observes nothing, and a
conv output that would need a grid the artifact lacks is an `ExportError`. The layers in
`FLOAT_OUTPUT_LAYERS` stay float convs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from torch import Tensor

from ptq4vm_core.artifact.layout import ACT_SCALE, ACT_ZERO_POINT, BIAS, WEIGHT_SCALE
from ptq4vm_core.artifact.layout import WEIGHT_ZERO_POINT as WEIGHT_ZP
from ptq4vm_core.artifact.verify import Verified
from ptq4vm_core.engine.export.graph import GraphEditor
from ptq4vm_core.engine.export.rvm_graph import ConvSite
from ptq4vm_core.model.recipe import FLOAT_OUTPUT_LAYERS, state_input

UINT8_MAX = 255
INT32_LIMIT = 2**31 - 1


class ExportError(Exception):
    """The artifact cannot be represented in the deployed graph."""


@dataclass(frozen=True)
class ActGrid:
    """A per-tensor activation grid: q = clamp(round(x / scale) + zero_point, 0, 2^bits - 1)."""

    scale: float
    zero_point: int
    bits: int

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def clip_range(self) -> tuple[np.float32, np.float32]:
        s = np.float32(self.scale)
        return np.float32((0 - self.zero_point) * s), np.float32((self.qmax - self.zero_point) * s)

    @classmethod
    def from_range(cls, lo: float, hi: float) -> ActGrid:
        """The 8-bit asymmetric grid covering [min(lo, 0), max(hi, 0)] (MinMax)."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo <= 0:
            return cls(1.0, 0, 8)
        scale = float(np.float32((hi - lo) / UINT8_MAX))
        return cls(scale, int(np.clip(round(-lo / scale), 0, UINT8_MAX)), 8)


@dataclass(frozen=True)
class OutputPoint:
    """A conv output (or its ReLU) that needs a grid of its own for the int8 kernel."""

    tensor: str
    layer: str


OUT_SITE_SUFFIX = ".out_site"
PARTS_INFIX = ".in_parts."


class QdqWriter:
    """Inserts QuantizeLinear/DequantizeLinear pairs, sharing scale/zero-point initializers
    between pairs of the same grid (ONNX Runtime fuses a Q/DQ pair only when they agree)."""

    def __init__(self, editor: GraphEditor) -> None:
        self.editor = editor
        self._params: dict[tuple[float, int], tuple[str, str]] = {}

    def params(self, grid: ActGrid) -> tuple[str, str]:
        key = (grid.scale, grid.zero_point)
        if key not in self._params:
            scale = self.editor.add_initializer("act_scale", np.float32(grid.scale))
            zero = self.editor.add_initializer("act_zero_point", np.uint8(grid.zero_point))
            self._params[key] = (scale, zero)
        return self._params[key]

    def quantize(self, tensor: str, grid: ActGrid) -> str:
        """`tensor` -> [Clip] -> Q: the name of the uint8 codes."""
        x = tensor
        if grid.bits < 8:
            lo, hi = grid.clip_range()
            lo_name = self.editor.add_initializer("grid_lo", lo)
            hi_name = self.editor.add_initializer("grid_hi", hi)
            x = self.editor.add_node("Clip", [x, lo_name, hi_name]).output[0]
        scale, zero = self.params(grid)
        return str(self.editor.add_node("QuantizeLinear", [x, scale, zero]).output[0])

    def dequantize(self, codes: str, grid: ActGrid, output: str | None = None) -> str:
        scale, zero = self.params(grid)
        outputs = None if output is None else [output]
        return str(
            self.editor.add_node("DequantizeLinear", [codes, scale, zero], outputs).output[0]
        )

    def insert(
        self, tensor: str, grid: ActGrid, consumers: list[onnx.NodeProto] | None = None
    ) -> str:
        """`tensor` -> [Clip] -> Q -> DQ; the consumers (default: all) read the DQ output."""
        targets = self.editor.consumers(tensor) if consumers is None else consumers
        dq = self.dequantize(self.quantize(tensor, grid), grid)
        self.editor.replace_uses(tensor, dq, only=targets)
        return dq


def act_grid(verified: Verified, name: str, bits: int) -> ActGrid:
    t = verified.tensors
    return ActGrid(float(t[f"{name}.{ACT_SCALE}"][0]), int(t[f"{name}.{ACT_ZERO_POINT}"][0]), bits)


def _int_weight(site: ConvSite, q: Tensor) -> np.ndarray:
    w = q.numpy().astype(np.int8)
    if site.tile > 1:
        w = np.tile(w, (site.tile, 1, 1, 1))
    if site.pad_in:
        w = np.concatenate([w, np.zeros((w.shape[0], site.pad_in, *w.shape[2:]), np.int8)], 1)
    return w


def quantize_convs(editor: GraphEditor, sites: list[ConvSite], verified: Verified) -> QdqWriter:
    """Weights, biases, input activations (whole or part by part) and output grids of every
    quantized layer, and the model's own activation sites (the GRU states)."""
    manifest = verified.manifest
    writer = QdqWriter(editor)
    for site in sites:
        entry = manifest.layers.get(site.layer)
        if entry is None:
            continue  # the policy keeps this layer in float
        t = verified.tensors
        zero_points = t[f"{site.layer}.{WEIGHT_ZP}"]
        if bool((zero_points != 0).any()):
            raise ExportError(
                f"layer {site.layer!r} has non-zero weight zero points: ONNX Runtime's int8 conv "
                "kernels take symmetric weights only; calibrate with symmetric weights"
            )
        conv = site.node
        w_scale = t[f"{site.layer}.{WEIGHT_SCALE}"].numpy().astype(np.float32)
        w_scale = np.broadcast_to(w_scale, (entry.weight_shape[0],))
        w_scale = np.tile(w_scale, site.tile)
        w_int = editor.add_initializer(
            f"{site.layer}.weight_int8", _int_weight(site, verified.integers[site.layer])
        )
        w_s = editor.add_initializer(f"{site.layer}.weight_scale", w_scale)
        w_z = editor.add_initializer(f"{site.layer}.weight_zero", np.zeros_like(w_scale, np.int8))
        conv.input[1] = editor.add_node("DequantizeLinear", [w_int, w_s, w_z], axis=0).output[0]
        grid = None
        if entry.act_bits is not None:
            grid = act_grid(verified, site.layer, entry.act_bits)
            _quantize_input(writer, conv, grid)
        parts = [n for n in manifest.sites if n.startswith(site.layer + PARTS_INFIX)]
        if parts:
            _quantize_parts(writer, conv, [_site_grid(verified, n) for n in sorted(parts)])
        if entry.bias:
            bias = np.tile(t[f"{site.layer}.{BIAS}"].numpy().astype(np.float32), site.tile)
            # A float conv adds the float bias, as the simulation does; an int8 one needs it
            # on its accumulator's grid.
            scale = None
            if grid is not None and site.layer not in FLOAT_OUTPUT_LAYERS:
                scale = np.float32(grid.scale) * w_scale
            _set_bias(editor, conv, bias, scale)
        out_site = site.layer + OUT_SITE_SUFFIX
        if out_site in manifest.sites:
            after_relu = manifest.policy.outputs[site.layer].after_relu
            _quantize_output(writer, site, _site_grid(verified, out_site), after_relu)
    for name in manifest.sites:
        if name.endswith(OUT_SITE_SUFFIX) or PARTS_INFIX in name:
            continue
        writer.insert(_site_input(name), _site_grid(verified, name))
    return writer


def _site_grid(verified: Verified, name: str) -> ActGrid:
    return act_grid(verified, name, verified.manifest.sites[name].act_bits)


def _quantize_parts(writer: QdqWriter, conv: onnx.NodeProto, grids: list[ActGrid]) -> None:
    """QDQ on each input of the Concat the conv reads, each with its part's grid; a padding
    input that repeats the last part (`rvm_graph.pad_concat_conv`) takes the last grid."""
    editor = writer.editor
    concat = editor.producer(conv.input[0])
    if concat is None or concat.op_type != "Concat" or len(editor.consumers(conv.input[0])) != 1:
        raise ExportError(f"{conv.name}: quantized part by part, but it reads no Concat of its own")
    inputs = list(concat.input)
    if not len(grids) <= len(inputs) <= len(grids) + 1:
        raise ExportError(
            f"{conv.name}: the artifact has {len(grids)} input parts, the graph concatenates "
            f"{len(inputs)} tensors"
        )
    for k, part in enumerate(inputs):
        writer.insert(part, grids[min(k, len(grids) - 1)], [concat])


def _quantize_output(writer: QdqWriter, site: ConvSite, grid: ActGrid, after_relu: bool) -> None:
    """QDQ on the conv's output, or on its ReLU's when the artifact puts the grid there."""
    editor = writer.editor
    y = site.node.output[0]
    consumers = editor.consumers(y)
    if after_relu:
        if len(consumers) != 1 or consumers[0].op_type != "Relu":
            raise ExportError(
                f"{site.layer}: the artifact's output grid follows a ReLU the graph lacks"
            )
        y = consumers[0].output[0]
    writer.insert(y, grid)


def _site_input(site: str) -> str:
    """The graph input an activation site quantizes (the model's recipe knows its states)."""
    name = state_input(site)
    if name is None:
        raise ExportError(f"unknown activation site {site!r}: this exporter knows RVM's GRU states")
    return name


def _quantize_input(writer: QdqWriter, conv: onnx.NodeProto, grid: ActGrid) -> None:
    """QDQ on the conv's input. When that input is a Concat feeding only this conv, the Concat's
    inputs are put on the same grid too (and a Slice feeding the Concat likewise), so that the
    runtime concatenates and crops uint8 (quantizing before those ops equals quantizing after)."""
    editor = writer.editor
    x = conv.input[0]
    concat = editor.producer(x)
    writer.insert(x, grid, [conv])
    if concat is None or concat.op_type != "Concat" or len(editor.consumers(x)) != 1:
        return
    for part in list(concat.input):
        source = editor.producer(part)
        if source is not None and source.op_type == "Slice" and len(editor.consumers(part)) == 1:
            writer.insert(source.input[0], grid, [source])
            part = source.output[0]
        writer.insert(part, grid, [concat])


def _set_bias(
    editor: GraphEditor, conv: onnx.NodeProto, bias: np.ndarray, scale: np.ndarray | None
) -> None:
    """int32 bias at scale s_x * s_w behind a DequantizeLinear, or float when the input is
    not quantized (or the integers would overflow int32)."""
    if scale is not None:
        q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
        if np.abs(q).max(initial=0) <= INT32_LIMIT:
            q_name = editor.add_initializer("bias_int32", q.astype(np.int32))
            s_name = editor.add_initializer("bias_scale", scale.astype(np.float32))
            z_name = editor.add_initializer("bias_zero", np.zeros(scale.shape, np.int32))
            dq = editor.add_node("DequantizeLinear", [q_name, s_name, z_name], axis=0)
            _set_input(conv, 2, dq.output[0])
            return
    _set_input(conv, 2, editor.add_initializer("bias", bias))


def _set_input(node: onnx.NodeProto, index: int, name: str) -> None:
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def output_points(
    editor: GraphEditor, sites: list[ConvSite], verified: Verified
) -> list[OutputPoint]:
    """The conv outputs the int8 kernels would need a grid for and that have none (after
    `quantize_convs`: every such output should carry the artifact's grid, so this is empty).
    An output that flows into one quantized b-bit input (b < 8) gets that input's grid at 8
    bits here (the conv writes the consumer's codes; the Clip stays after them)."""
    writer = QdqWriter(editor)
    points = []
    for site in sites:
        entry = verified.manifest.layers.get(site.layer)
        if entry is None or site.layer in FLOAT_OUTPUT_LAYERS:
            continue
        if entry.act_bits is None and not _has_parts(verified, site.layer):
            continue
        y = site.node.output[0]
        consumers = editor.consumers(y)
        relu = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Relu" else None
        tensor = relu.output[0] if relu is not None else y
        grid = _consumer_grid(editor, tensor)
        if grid is not None and (relu is None or grid.zero_point == 0):
            if grid.bits < 8:
                writer.insert(tensor, ActGrid(grid.scale, grid.zero_point, 8))
            continue
        points.append(OutputPoint(tensor, site.layer))
    return points


def _has_parts(verified: Verified, layer: str) -> bool:
    return any(n.startswith(layer + PARTS_INFIX) for n in verified.manifest.sites)


def _consumer_grid(editor: GraphEditor, tensor: str) -> ActGrid | None:
    """The grid of the single QuantizeLinear (after an optional b-bit Clip) reading `tensor`."""
    consumers = editor.consumers(tensor)
    if len(consumers) != 1 or editor.is_graph_output(tensor):
        return None
    node, bits = consumers[0], 8
    if node.op_type == "Clip":
        after = editor.consumers(node.output[0])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear":
            return None
        node = after[0]
        scale, zero = editor.array(node.input[1]), editor.array(node.input[2])
        lo, hi = editor.array(consumers[0].input[1]), editor.array(consumers[0].input[2])
        qmax = round(float(hi) / float(scale)) + int(zero)
        if round(float(lo) / float(scale)) + int(zero) != 0 or qmax >= UINT8_MAX:
            return None
        bits = qmax.bit_length()
    if node.op_type != "QuantizeLinear":
        return None
    return ActGrid(float(editor.array(node.input[1])), int(editor.array(node.input[2])), bits)


def require_grids(points: list[OutputPoint]) -> None:
    """Refuses a graph whose int8 kernels need grids the artifact does not carry."""
    if points:
        names = ", ".join(sorted(p.layer for p in points))
        raise ExportError(
            f"the artifact has no output grid for {len(points)} conv outputs the int8 graph "
            f"requantizes ({names}); the exporter observes none: recalibrate with a policy "
            "that has them (model.recipe.output_grids)"
        )
