"""The published RVM graph, prepared for export, and rewrites that keep its float semantics.

Every rewrite here leaves the FP32 function unchanged, exactly or up to float rounding (noted
per rewrite), and is checked by tests against the published graph:

* `normalized`: opset 12 -> 17 (per-axis QuantizeLinear needs >= 13), and one symbolic name per
  dimension (the published file names every spatial dimension "height"/"width", which lets
  ONNX Runtime plan one buffer for tensors of different sizes once new nodes sit in between).
* `drop_identity_split_concat`: a Split whose outputs are concatenated back in order.
* `merge_box_filters`: the refiner's four 4-channel box filters (one shared 3x3 mean kernel)
  become one 16-channel depthwise conv on their concatenated inputs, then a Split: exact, and a
  16-channel depthwise conv is what the int8 depthwise kernels handle (4 channels are not).
* `pad_concat_conv`: a conv whose input is a Concat with a channel count that is not a
  multiple of 4 gets extra input channels (copies of existing ones) with zero weights: exact,
  and it lets the symmetric int8 conv kernel run (it needs input channels % 4 == 0).
* `split_refiner_output`: the full-resolution tail `clip(A*[src, mean(src)] + b)` computed as
  separate foreground and alpha paths, with `A + 1` folded in at low resolution for the
  foreground: no 4-channel full-resolution concat, split or extra add (equal up to rounding).
* `specialise_full_resolution`: for downsample ratio 1 only, the resizes that are then
  identities (input downsampling, coefficient upsampling) are removed; the engine uses this
  graph when the ratio is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import version_converter

from ptq4vm_core.engine.export.graph import GraphEditor, GraphError
from ptq4vm_core.model.recipe import BOX_FILTER

OPSET = 17
IR_VERSION = 8  # opset 17 models are IR 8
IMAGE_IO = ("src", "fgr", "pha")
CHANNEL_ALIGN = 4


@dataclass
class ConvSite:
    """A Conv node of the graph and the model layer it computes. `tile` > 1: the layer's
    weight repeated `tile` times along the output channels (merged box filters); `pad_in`:
    zero input channels appended to the weight."""

    node: onnx.NodeProto
    layer: str
    tile: int = 1
    pad_in: int = 0


def normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The published graph at opset 17 with a distinct symbolic name per dimension."""
    converted = version_converter.convert_version(model, OPSET)
    converted.ir_version = IR_VERSION
    graph = converted.graph
    del graph.value_info[:]  # shapes recorded for the old opset; ORT infers its own
    for value in [*graph.input, *graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_param") or dim.dim_param == "batch_size":
                continue
            if value.name in IMAGE_IO and axis >= 2:
                dim.dim_param = ("height", "width")[axis - 2]
            else:
                dim.dim_param = f"{value.name}_dim{axis}"
    return converted


def conv_sites(editor: GraphEditor, layers: list[str]) -> dict[str, ConvSite]:
    """Conv node name -> ConvSite. The graph's distinct conv weights in execution order are the
    model's convs in registration order (as `ptq4vm_core.model.weights` loads them)."""
    weights: list[str] = []
    for node in editor.nodes:
        if node.op_type == "Conv" and node.input[1] not in weights:
            weights.append(node.input[1])
    if len(weights) != len(layers):
        raise GraphError(f"the graph has {len(weights)} distinct convs, the model {len(layers)}")
    layer_of = dict(zip(weights, layers, strict=True))
    return {n.name: ConvSite(n, layer_of[n.input[1]]) for n in editor.nodes if n.op_type == "Conv"}


def drop_identity_split_concat(editor: GraphEditor) -> int:
    """Removes Concat(Split(x)) pairs that rebuild x; returns how many."""
    removed = 0
    for concat in [n for n in editor.nodes if n.op_type == "Concat"]:
        split = editor.producer(concat.input[0]) if concat.input else None
        if split is None or split.op_type != "Split" or list(concat.input) != list(split.output):
            continue
        if _attr(split, "axis", 0) != _attr(concat, "axis", None):
            continue
        editor.bypass(concat, split.input[0])
        if not any(editor.consumers(o) for o in split.output):
            editor.remove(split)
        removed += 1
    return removed


def merge_box_filters(editor: GraphEditor, sites: dict[str, ConvSite]) -> None:
    """The four box-filter convs -> Concat, one depthwise conv (weights tiled), Split."""
    boxes = [s for s in sites.values() if s.layer == BOX_FILTER]
    if len(boxes) < 2:
        return
    first = boxes[0].node
    weight = editor.array(first.input[1])
    channels = weight.shape[0]
    merged_channels = channels * len(boxes)
    concat = editor.add_node("Concat", [s.node.input[0] for s in boxes], axis=1)
    tiled = editor.add_initializer("box_filter_tiled", np.tile(weight, (len(boxes), 1, 1, 1)))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in first.attribute}
    attrs["group"] = merged_channels
    conv = editor.add_node("Conv", [concat.output[0], tiled], **attrs)
    sizes = editor.add_initializer("box_split", np.full(len(boxes), channels, np.int64))
    editor.add_node("Split", [conv.output[0], sizes], [s.node.output[0] for s in boxes], axis=1)
    for site in boxes:
        editor.remove(site.node)
        del sites[site.node.name]
    sites[conv.name] = ConvSite(conv, BOX_FILTER, tile=len(boxes))


def pad_concat_conv(editor: GraphEditor, site: ConvSite, align: int = CHANNEL_ALIGN) -> None:
    """Appends input channels to a conv fed by a Concat so that their count is a multiple of
    `align`; the new channels repeat the Concat's last input and get zero weights."""
    conv = site.node
    if _attr(conv, "group", 1) != 1:
        return
    weight = editor.array(conv.input[1])
    extra = -weight.shape[1] % align
    concat = editor.producer(conv.input[0])
    if extra == 0 or concat is None or concat.op_type != "Concat":
        return
    if len(editor.consumers(concat.output[0])) != 1:
        return
    starts = editor.add_initializer("pad_start", np.array([0], np.int64))
    ends = editor.add_initializer("pad_end", np.array([extra], np.int64))
    axes = editor.add_initializer("pad_axis", np.array([1], np.int64))
    pad = editor.add_node("Slice", [concat.input[-1], starts, ends, axes])
    concat.input.append(pad.output[0])
    zeros = np.zeros((weight.shape[0], extra, *weight.shape[2:]), weight.dtype)
    conv.input[1] = editor.add_initializer("padded_weight", np.concatenate([weight, zeros], 1))
    site.pad_in = extra


@dataclass(frozen=True)
class RefinerTail:
    """The full-resolution tail of the graph: out = A_up * cat(src, mean) + b_up, split into
    the foreground residual and alpha, each clipped to [0, 1]."""

    resize_a: onnx.NodeProto
    resize_b: onnx.NodeProto
    mean: str  # ReduceMean(src) at full resolution
    clip_fgr: onnx.NodeProto
    clip_pha: onnx.NodeProto
    removed: tuple[onnx.NodeProto, ...]


def _refiner_tail(editor: GraphEditor) -> RefinerTail:
    clip_fgr, clip_pha = editor.producer("fgr"), editor.producer("pha")
    add_src = editor.producer(clip_fgr.input[0]) if clip_fgr else None
    split = editor.producer(clip_pha.input[0]) if clip_pha else None
    add_b = editor.producer(split.input[0]) if split else None
    if clip_fgr is None or clip_pha is None or add_src is None or split is None or add_b is None:
        raise GraphError("the graph's output tail is not clip(A*x + b) as in RVM")
    mul, resize_b = (editor.producer(x) for x in add_b.input)
    if mul is None or mul.op_type != "Mul":
        mul, resize_b = resize_b, mul
    if mul is None or resize_b is None or resize_b.op_type != "Resize":
        raise GraphError("the refiner tail has no Mul(A_up, x) + Resize(b)")
    resize_a, fine = (editor.producer(x) for x in mul.input)
    if resize_a is None or resize_a.op_type != "Resize":
        resize_a, fine = fine, resize_a
    if resize_a is None or fine is None or fine.op_type != "Concat":
        raise GraphError("the refiner tail has no Resize(A) * Concat(src, mean)")
    mean = next((x for x in fine.input if x != "src"), None)
    if mean is None or list(fine.input) != ["src", mean]:
        raise GraphError("the refiner's fine image is not Concat(src, mean(src))")
    return RefinerTail(resize_a, resize_b, mean, clip_fgr, clip_pha, (mul, add_b, split, add_src))


def split_refiner_output(editor: GraphEditor, *, merged_upsampling: bool = False) -> None:
    """fgr = clip(up(A3 + 1) * src + up(b3)), pha = clip(up(Aa) * mean + up(ba)): the same
    function without full-resolution concat, split and residual add.

    `merged_upsampling`: A and b are upsampled as one 8-channel tensor and sliced at full
    resolution (for OpenVINO, whose channels-last bilinear resize wastes most of a vector on 1
    or 3 channels); otherwise each of the four paths has its own resize (for ONNX Runtime)."""
    tail = _refiner_tail(editor)
    a_low, b_low = tail.resize_a.input[0], tail.resize_b.input[0]
    one_rgb = editor.add_initializer("fgr_residual_one", np.array([1, 1, 1, 0], np.float32))
    shape = editor.add_initializer("one_shape", np.array([1, 4, 1, 1], np.int64))
    ones = editor.add_node("Reshape", [one_rgb, shape])
    a_fgr = editor.add_node("Add", [a_low, ones.output[0]])

    def const(base: str, values: list[int]) -> str:
        return editor.add_initializer(base, np.array(values, np.int64))

    # The published resizes take `sizes` = [N, 4, H, W]; each path needs its own channel count.
    sizes_in = tail.resize_a.input[3]
    hw = editor.add_node("Slice", [sizes_in, const("hw_start", [2]), const("hw_end", [4])])
    if merged_upsampling:
        a3, aa, b3, ba = _upsample_merged(editor, tail, a_fgr.output[0], b_low, hw.output[0])
        _finish_tail(editor, tail, a3, aa, b3, ba)
        return
    sizes = editor.add_initializer("rgb_alpha", np.array([3, 1], np.int64))
    a3, aa = editor.add_node("Split", [a_fgr.output[0], sizes], [editor.unique("a3"),
                             editor.unique("aa")], axis=1).output  # fmt: skip
    b3, ba = editor.add_node("Split", [b_low, sizes], [editor.unique("b3"),
                             editor.unique("ba")], axis=1).output  # fmt: skip

    def upsample(x: str, like: onnx.NodeProto) -> str:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in like.attribute}
        shape = editor.add_node("Shape", [x])
        nc = editor.add_node("Slice", [shape.output[0], const("nc_start", [0]),
                             const("nc_end", [2])])  # fmt: skip
        sizes = editor.add_node("Concat", [nc.output[0], hw.output[0]], axis=0)
        resize = editor.add_node("Resize", [x, *like.input[1:3], sizes.output[0]], **attrs)
        return str(resize.output[0])

    _finish_tail(
        editor,
        tail,
        upsample(a3, tail.resize_a),
        upsample(aa, tail.resize_a),
        upsample(b3, tail.resize_b),
        upsample(ba, tail.resize_b),
    )


def _upsample_merged(
    editor: GraphEditor, tail: RefinerTail, a_low: str, b_low: str, hw: str
) -> tuple[str, str, str, str]:
    """One resize of Concat(A + [1,1,1,0], b) (8 channels) to full size, sliced into the
    foreground and alpha coefficients."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in tail.resize_a.attribute}
    both = editor.add_node("Concat", [a_low, b_low], axis=1)
    shape = editor.add_node("Shape", [both.output[0]])
    n = editor.add_initializer("n_start", np.array([0], np.int64))
    nc = editor.add_node("Slice", [shape.output[0], n, editor.add_initializer("nc_end",
                         np.array([2], np.int64))])  # fmt: skip
    sizes = editor.add_node("Concat", [nc.output[0], hw], axis=0)
    up = editor.add_node("Resize", [both.output[0], *tail.resize_a.input[1:3], sizes.output[0]],
                         **attrs)  # fmt: skip
    axis = editor.add_initializer("channel_axis", np.array([1], np.int64))
    out = []
    for start, end in ((0, 3), (3, 4), (4, 7), (7, 8)):
        lo = editor.add_initializer("up_start", np.array([start], np.int64))
        hi = editor.add_initializer("up_end", np.array([end], np.int64))
        out.append(str(editor.add_node("Slice", [up.output[0], lo, hi, axis]).output[0]))
    return out[0], out[1], out[2], out[3]


def _finish_tail(
    editor: GraphEditor, tail: RefinerTail, a3_up: str, aa_up: str, b3_up: str, ba_up: str
) -> None:
    fgr = editor.add_node("Mul", [a3_up, "src"])
    fgr = editor.add_node("Add", [fgr.output[0], b3_up])
    pha = editor.add_node("Mul", [aa_up, tail.mean])
    pha = editor.add_node("Add", [pha.output[0], ba_up])
    tail.clip_fgr.input[0] = fgr.output[0]
    tail.clip_pha.input[0] = pha.output[0]
    for node in (*tail.removed, tail.resize_a, tail.resize_b):
        editor.remove(node)
    for node in list(editor.nodes):  # the full-resolution Concat(src, mean), now unused
        if node.op_type == "Concat" and not any(editor.consumers(o) for o in node.output):
            editor.remove(node)


def specialise_full_resolution(editor: GraphEditor) -> None:
    """For downsample ratio 1: drop the resizes that are identities at that ratio (half-pixel
    bilinear resizing by a scale of exactly 1 returns its input), then merge the duplicate
    channel means of src that this leaves."""
    for node in list(editor.nodes):
        if node.op_type != "Resize":
            continue
        if node.input[0] == "src" or (len(node.input) > 3 and node.input[3]):
            editor.bypass(node, node.input[0])
    means = [n for n in editor.nodes if n.op_type == "ReduceMean" and n.input[0] == "src"]
    for node in means[1:]:
        if [a.SerializeToString() for a in node.attribute] == [
            a.SerializeToString() for a in means[0].attribute
        ]:
            editor.bypass(node, means[0].output[0])


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
