"""The exported graph: the float rewrites keep RVM's function, the artifact's integers and
grids are carried exactly, exports are cached per artifact content."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ptq4vm_core.artifact.verify import verify
from ptq4vm_core.engine import cache
from ptq4vm_core.engine.export import build as export
from ptq4vm_core.engine.export.build import rewritten_graph
from ptq4vm_core.engine.export.graph import GraphEditor
from ptq4vm_core.engine.export.qdq import ActGrid, ExportError, QdqWriter
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.model.recipe import output_grids
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.spec import activation_spec


@pytest.mark.parametrize(("full_resolution", "ratio"), [(False, 0.5), (False, 1.0), (True, 1.0)])
def test_float_rewrites_keep_the_published_function(
    weights_file: Path, tmp_path: Path, clip_frames, full_resolution: bool, ratio: float
) -> None:
    editor, _ = rewritten_graph(full_resolution=full_resolution)
    path = tmp_path / "rewritten.onnx"
    onnx.save(editor.to_model(), str(path))
    published, rewritten = OrtEngine(weights_file), OrtEngine(path)
    state_a = state_b = None
    for frame in clip_frames[:3]:
        src = frames_to_batch([frame])
        a, b = published.infer(src, state_a, ratio), rewritten.infer(src, state_b, ratio)
        state_a, state_b = a.state, b.state
        np.testing.assert_allclose(b.pha, a.pha, atol=2e-5)
        np.testing.assert_allclose(b.foreground(), a.foreground(), atol=2e-5)
        for x, y in zip(b.state, a.state, strict=True):
            np.testing.assert_allclose(x, y, atol=2e-5)


def test_an_edited_graph_edited_again_gets_no_duplicate_names() -> None:
    """A second editor over a graph the first wrote (an export rewritten again) names its new
    nodes and tensors apart from the first editor's `base::N` names."""
    graph = helper.make_graph(
        [], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    first = GraphEditor(helper.make_model(graph))
    mid = first.add_node("Relu", ["x"]).output[0]
    first.add_node("Relu", [mid], ["y"])
    second = GraphEditor(first.to_model())
    added = second.add_node("Relu", ["x"])
    taken = {n.name for n in first.nodes} | {mid}
    assert added.name not in taken
    assert added.output[0] not in taken


def _run_grid(grid: ActGrid, x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(
        [], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    editor = GraphEditor(model)
    identity = editor.add_node("Identity", ["x"], ["y"])
    QdqWriter(editor).insert("x", grid, [identity])
    session = ort.InferenceSession(editor.to_model().SerializeToString())
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_grids_are_the_simulations(bits: int) -> None:
    quantizer = UniformQuantizer(activation_spec(bits))
    with torch.no_grad():
        quantizer.scale.fill_(0.0371)
        quantizer.zero_point.fill_(3)
    quantizer.mode = QuantMode.QUANTIZED
    x = np.linspace(-1.0, 10.0, 20001, dtype=np.float32)
    with torch.no_grad():
        expected = quantizer(torch.from_numpy(x)).numpy()
    got = _run_grid(ActGrid(0.0371, 3, bits), x)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) == 2**bits


def test_exported_weights_are_the_artifacts_integers(
    int8_engine: QuantizedOrtEngine, w8a8_artifact: Path
) -> None:
    verified = verify(w8a8_artifact)
    model = onnx.load(str(int8_engine.graphs.general))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for layer, entry in verified.manifest.layers.items():
        (name,) = [k for k in inits if k.startswith(f"{layer}.weight_int8::")]
        stored = inits[name]
        assert stored.dtype == np.int8
        c_out, c_in = entry.weight_shape[:2]
        expected = verified.integers[layer].numpy()
        np.testing.assert_array_equal(stored[:c_out, :c_in], expected)
        assert not stored[:, c_in:].any()  # padding channels have zero weights
        (scale,) = [k for k in inits if k.startswith(f"{layer}.weight_scale::")]
        np.testing.assert_array_equal(
            inits[scale][:c_out], verified.tensors[f"{layer}.weight_scale"].numpy()
        )


def test_exported_graph_keeps_the_published_interface(int8_engine: QuantizedOrtEngine) -> None:
    for path in (int8_engine.graphs.general, int8_engine.graphs.full_resolution):
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == [
            "src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"
        ]  # fmt: skip
        assert [o.name for o in model.graph.output] == ["fgr", "pha", "r1o", "r2o", "r3o", "r4o"]
        assert model.opset_import[0].version >= 13
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_export_is_made_once_and_keyed_on_the_tensors(
    int8_engine: QuantizedOrtEngine,
    w8a8_artifact: Path,
    engine_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(cache, "export_artifact", refuse)
    again = cache.cached_export(w8a8_artifact, cache=engine_cache)
    assert again.general == int8_engine.graphs.general
    # Another tensor file (e.g. the artifact re-saved after calibration) is another export.
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((w8a8_artifact / "manifest.json").read_text())
    manifest["files"]["tensors.safetensors"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert cache.export_key(copy) != cache.export_key(w8a8_artifact)


def test_an_incomplete_export_is_replaced(w8a8_artifact: Path, tmp_path: Path) -> None:
    key = cache.export_key(w8a8_artifact)
    broken = tmp_path / key
    broken.mkdir(parents=True)
    (broken / export.GENERAL).write_bytes(b"half a file")
    graphs = cache.cached_export(w8a8_artifact, cache=tmp_path)
    assert graphs.directory == broken
    onnx.checker.check_model(str(graphs.general))
    assert json.loads((broken / export.REPORT).read_text())["export_version"] >= 1


def _artifact_grids(w8a8_artifact: Path) -> set[tuple[float, int]]:
    """Every (scale, zero point) the artifact's policy puts on an activation: conv inputs,
    input parts, conv outputs, the GRU states."""
    verified = verify(w8a8_artifact)
    t = verified.tensors
    names = [n for n, e in verified.manifest.layers.items() if e.act_bits is not None]
    names += list(verified.manifest.sites)
    return {(float(t[f"{n}.act_scale"][0]), int(t[f"{n}.act_zero_point"][0])) for n in names}


def test_every_grid_of_the_exported_graphs_is_one_of_the_artifacts(
    int8_engine: QuantizedOrtEngine, w8a8_artifact: Path
) -> None:
    """The exporter carries grids and invents none: every QuantizeLinear of every exported
    graph (both forms, both ratios) quantizes on a grid the artifact's policy calibrated."""
    grids = _artifact_grids(w8a8_artifact)
    directory = int8_engine.graphs.directory
    for name in export.GRAPH_FILES:
        editor = GraphEditor(onnx.load(str(directory / name)))
        used = set()
        for node in editor.nodes:
            if node.op_type == "QuantizeLinear":
                scale, zero = editor.array(node.input[1]), editor.array(node.input[2])
                used.add((float(np.float32(scale)), int(zero)))
        invented = used - grids
        assert not invented, f"{name}: {len(invented)} grids not in the artifact: {invented}"
        # and every grid the policy calibrated is in the graph
        assert grids <= used, f"{name}: artifact grids the graph lacks: {grids - used}"


def test_the_exporter_refuses_an_artifact_without_the_grids_it_needs(
    w8a8_artifact: Path,
) -> None:
    """An artifact whose policy lacks the conv-output grids (e.g. one calibrated before they
    existed) is refused: the exporter would otherwise have to observe grids of its own."""
    verified = verify(w8a8_artifact)
    manifest = verified.manifest
    policy = dataclasses.replace(manifest.policy, outputs={})
    sites = {n: e for n, e in manifest.sites.items() if not n.endswith(".out_site")}
    stripped = dataclasses.replace(
        verified, manifest=manifest.model_copy(update={"policy": policy, "sites": sites})
    )
    with pytest.raises(ExportError, match=f"no output grid for {len(output_grids())} conv outputs"):
        export.build_graph(stripped, full_resolution=True)
