"""Rewrites of the exported QDQ graph into the form OpenVINO's CPU plugin runs fastest.

The int8 graph ONNX Runtime runs best (`export`, `rvm_graph`) is not the one OpenVINO runs
best: OpenVINO lays int8 tensors out channels-last (NHWC) and has only reference (slow)
kernels for channel concatenations and splits in that layout, and hard-sigmoid as a separate
float node forces a layout change before and after it. Each rewrite here keeps the quantized
function (the same integers on the same grids; float results equal up to summation order).
What each one changes on each runtime is measured by benchmarks/engine_forms.py
(docs/benchmarks/engine-forms.md); together they took OpenVINO from 1.98x to 2.38x ORT FP32's
speed at 512x288 ds 1 and from 1.37x to 1.96x at 1280x720 ds 0.375 (CPU time, one thread):

* `split_concat_convs`: a conv over a channel concatenation of quantized tensors becomes one
  int8 conv per concatenated input, summed (W [O, C1+C2] * [x1; x2] = W1 * x1 + W2 * x2). Each
  input keeps its own QDQ (the grid the concatenation had), no concat is materialised, and no
  zero-padded channels are needed (within noise in that benchmark);
* `hard_sigmoid_as_clip`: HardSigmoid(x) = clip(alpha * x + beta, 0, 1) spelled with Mul, Add
  and Clip, which OpenVINO fuses into its elementwise subgraphs around the int8 convs;
* the refiner's four box filters are not merged into one 16-channel conv for this runtime
  (`rvm_graph.merge_box_filters` is for ONNX Runtime), which saves a full-resolution
  16-channel concat and split at ratio 1;
* the full-resolution tail upsamples A and b as one 8-channel resize
  (`rvm_graph.split_refiner_output(merged_upsampling=True)`): a 1- or 3-channel bilinear
  resize in NHWC wastes most of each vector (the largest single effect at 720p).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ptq4vm_core.engine.export.graph import GraphEditor

PROBE_SIZE = (64, 64)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _single_consumer(editor: GraphEditor, tensor: str) -> bool:
    return len(editor.consumers(tensor)) == 1 and not editor.is_graph_output(tensor)


def _concat_behind(
    editor: GraphEditor, conv: onnx.NodeProto
) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The Concat feeding `conv` (directly or through one Q/DQ pair only it reads) and the
    nodes between them, or (None, [])."""
    source = editor.producer(conv.input[0])
    between: list[onnx.NodeProto] = []
    if source is not None and source.op_type == "DequantizeLinear":
        quant = editor.producer(source.input[0])
        if (
            quant is not None
            and quant.op_type == "QuantizeLinear"
            and _single_consumer(editor, source.output[0])
            and _single_consumer(editor, quant.output[0])
        ):
            between = [source, quant]
            source = editor.producer(quant.input[0])
    if source is None or source.op_type != "Concat" or _attrs(source).get("axis") != 1:
        return None, []
    if not _single_consumer(editor, source.output[0]):
        return None, []
    return source, between


def concat_channels(model: onnx.ModelProto, tensors: list[str], ratio: float) -> dict[str, int]:
    """The channel count of each of `tensors`, from one run of `model` on a small frame
    (channel counts do not depend on the frame size)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in tensors:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    zero = np.zeros((1, 1, 1, 1), np.float32)
    feeds = {
        "src": np.full((1, 3, *PROBE_SIZE), 0.5, np.float32),
        "downsample_ratio": np.array([ratio], np.float32),
        **{f"r{k}i": zero for k in range(1, 5)},
    }
    values = session.run(tensors, feeds)
    return {name: int(v.shape[1]) for name, v in zip(tensors, values, strict=True)}


def split_concat_convs(editor: GraphEditor, ratio: float) -> int:
    """Every full (group 1) conv over a channel concatenation of dequantized int8 tensors ->
    one conv per concatenated input, summed; the bias goes with the first. Returns the count.
    Parts whose weights are all zero (padding channels) are dropped."""
    targets = []
    for conv in editor.nodes:
        if conv.op_type != "Conv" or _attrs(conv).get("group", 1) != 1:
            continue
        weight_dq = editor.producer(conv.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        concat, between = _concat_behind(editor, conv)
        if concat is not None:
            targets.append((conv, weight_dq, concat, between))
    if not targets:
        return 0
    parts = [x for _, _, concat, _ in targets for x in concat.input]
    channels = concat_channels(editor.to_model(), list(dict.fromkeys(parts)), ratio)
    for conv, weight_dq, concat, between in targets:
        weight = editor.array(weight_dq.input[0])
        counts = [channels[x] for x in concat.input]
        if sum(counts) != weight.shape[1]:
            continue  # not the concatenation the weight was made for; leave it
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        sums: list[str] = []
        start = 0
        for part, count in zip(concat.input, counts, strict=True):
            w = weight[:, start : start + count]
            start += count
            if not w.any():
                continue
            w_name = editor.add_initializer(f"{conv.name}.part_weight", np.ascontiguousarray(w))
            w_dq = editor.add_node(
                "DequantizeLinear", [w_name, *weight_dq.input[1:]], **_attrs(weight_dq)
            )
            inputs = [part, w_dq.output[0]] + ([bias] if bias and not sums else [])
            sums.append(editor.add_node("Conv", inputs, **_attrs(conv)).output[0])
        total = sums[0]
        for i, term in enumerate(sums[1:], start=2):
            out = conv.output[0] if i == len(sums) else editor.unique(f"{conv.name}.sum")
            total = editor.add_node("Add", [total, term], [out]).output[0]
        if len(sums) == 1:
            editor.add_node("Identity", [total], [conv.output[0]])
        for node in (conv, concat, *between):
            editor.remove(node)
    return len(targets)


def hard_sigmoid_as_clip(editor: GraphEditor) -> int:
    """HardSigmoid(x; alpha, beta) -> Clip(Mul(x, alpha) + beta, 0, 1); returns the count."""
    count = 0
    for node in [n for n in editor.nodes if n.op_type == "HardSigmoid"]:
        attrs = _attrs(node)
        alpha = editor.add_initializer("hs_alpha", np.float32(attrs.get("alpha", 0.2)))
        beta = editor.add_initializer("hs_beta", np.float32(attrs.get("beta", 0.5)))
        lo = editor.add_initializer("hs_lo", np.float32(0.0))
        hi = editor.add_initializer("hs_hi", np.float32(1.0))
        scaled = editor.add_node("Mul", [node.input[0], alpha])
        shifted = editor.add_node("Add", [scaled.output[0], beta])
        editor.add_node("Clip", [shifted.output[0], lo, hi], [node.output[0]])
        editor.remove(node)
        count += 1
    return count
