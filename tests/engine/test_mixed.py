"""Mixed precision: layers whose input activations stay in float, calibrated and deployed so."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from ptq4vm_core.artifact import load_artifact
from ptq4vm_core.artifact.verify import verify
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.engine.export.graph import GraphEditor
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.model.recipe import SENSITIVE_INPUTS, rvm_policy
from ptq4vm_core.quant.model import quant_layers
from tests.engine.conftest import tiny_artifact
from tests.engine.test_int8_engine import alpha_diffs, check_parity


def test_the_policy_keeps_only_those_inputs_in_float() -> None:
    policy = rvm_policy("w8a8", float_inputs=SENSITIVE_INPUTS)
    for name in SENSITIVE_INPUTS:
        layer = policy.for_layer(name)
        assert layer is not None
        assert layer.activation is None
        assert layer.weight.bits == 8
    other = policy.for_layer("decode2.conv")
    assert other is not None
    assert other.activation is not None
    assert other.activation.bits == 8
    w4 = rvm_policy("w4a4", float_inputs=("backbone.features.0.0", "decode1.conv"))
    first, decode1 = w4.for_layer("backbone.features.0.0"), w4.for_layer("decode1.conv")
    assert first is not None
    assert first.weight.bits == 8  # the first layer keeps its 8 bits
    assert decode1 is not None
    assert decode1.weight.bits == 4
    assert decode1.activation is None
    with pytest.raises(ValueError, match="no convolution"):
        rvm_policy("w8a8", float_inputs=("decoder.nope",))


@pytest.fixture(scope="module")
def mixed_artifact(
    rvm: MattingNetwork, sample_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "artifact"
    policy = rvm_policy("w8a8", float_inputs=SENSITIVE_INPUTS)
    return tiny_artifact(rvm, sample_clip, out, policy=policy)


def test_the_artifact_has_no_grid_on_those_inputs(mixed_artifact: Path) -> None:
    manifest = verify(mixed_artifact).manifest
    layers = quant_layers(load_artifact(mixed_artifact).model)
    for name in SENSITIVE_INPUTS:
        assert manifest.layers[name].act_bits is None
        assert layers[name].act_quantizer is None
        assert layers[name].weight_quantizer.base.spec.bits == 8
        assert not [s for s in manifest.sites if s.startswith(f"{name}.in_parts.")]
    # the neighbours keep theirs: a plain conv, and a concat conv's parts
    assert manifest.layers["decode2.gru.ih"].act_bits is None  # its input is quantized by parts
    assert manifest.sites["decode2.conv.in_parts.0"].act_bits == 8
    assert manifest.layers["backbone.features.2.block.0.0"].act_bits == 8


def test_deployed_with_float_inputs_at_parity(
    mixed_artifact: Path, tmp_path: Path, clip_frames
) -> None:
    engine = QuantizedOrtEngine(cached_export(mixed_artifact, cache=tmp_path))
    editor = GraphEditor(onnx.load(str(engine.graphs.general)))
    convs = {}
    for node in editor.graph.node:
        weight = editor.producer(node.input[1]) if node.op_type == "Conv" else None
        if weight is not None and weight.op_type == "DequantizeLinear":
            convs[weight.input[0].partition(".weight_int8")[0]] = node
    for name in SENSITIVE_INPUTS:
        source = editor.producer(convs[name].input[0])  # int8 weights, float input
        assert source is None or source.op_type != "DequantizeLinear", name
    quantized = editor.producer(convs["backbone.features.2.block.0.0"].input[0])
    assert quantized is not None
    assert quantized.op_type == "DequantizeLinear"
    concat = editor.producer(convs["decode2.conv"].input[0])  # quantized part by part
    assert concat is not None
    assert concat.op_type == "Concat"
    parts = [editor.producer(x) for x in concat.input]
    assert all(p is not None and p.op_type == "DequantizeLinear" for p in parts)
    sim = TorchEngine(load_artifact(mixed_artifact).model, name="sim-mixed")
    means, _ = alpha_diffs(engine, sim, clip_frames[:12], 1.0)
    check_parity(means, window=3)
