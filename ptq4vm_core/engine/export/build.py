"""Artifact -> ONNX QDQ graph that ONNX Runtime runs on int8 kernels.

The exported graph is the published RVM graph (its resize and refiner arithmetic are what the
runtime already matches) with the artifact's quantization written in (`qdq`) and rewrites
that keep its float function (`rvm_graph`). Opset 17; inputs src, r1i..r4i, downsample_ratio
and outputs fgr, pha, r1o..r4o as in the published model.

What runs in integer (after ONNX Runtime fuses the Q/DQ pairs):
  every quantized conv with one input grid except the stem and the refiner's box filter: uint8
  activations x int8 weights with int32 accumulation (QLinearConv), its ReLU folded into the
  requantization. The convs the artifact quantizes part by part (a concatenation's inputs on
  their own grids: the decoder's and GRUs' convs, the refiner's first) run on ONNX Runtime as
  float convs on the dequantized int8 operands (QLinearConv takes one input grid) and on
  OpenVINO as one int8 conv per part (`openvino_graph.split_concat_convs`).
What runs in float:
  the stem conv and the box filter (as float convs on the dequantized int8 operands, see
  `model.recipe.FLOAT_OUTPUT_LAYERS`), all resizes (the runtime has no 8-bit bilinear resize),
  the image pyramid, hard-swish, SE gates, sigmoid/tanh and the GRU state update, the residual
  adds, the guided filter's statistics, and the whole full-resolution tail (upsampling A and b,
  A*x + b, clipping). Float is what the simulation computes there too. Every grid of the graph
  is one of the artifact's (conv inputs and input parts, conv outputs, GRU states): the
  exporter observes nothing.

Two graphs are written per artifact: the general one and one specialised for downsample
ratio 1 (identity resizes removed); see `rvm_graph`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ptq4vm_core.artifact.layout import MODEL_NAME, architecture
from ptq4vm_core.artifact.manifest import TENSORS_FILE
from ptq4vm_core.artifact.verify import Verified, verify
from ptq4vm_core.assets import RVM_WEIGHTS, weights_path
from ptq4vm_core.engine.export import openvino_graph, qdq, rvm_graph
from ptq4vm_core.engine.export.graph import GraphEditor
from ptq4vm_core.files import atomic_path, write_synced
from ptq4vm_core.model.recipe import FLOAT_OUTPUT_LAYERS

logger = logging.getLogger(__name__)

EXPORT_VERSION = 3  # bump when the exported graph changes for the same artifact
GENERAL = "rvm-int8.onnx"
FULL_RESOLUTION = "rvm-int8-ds1.onnx"
# The same quantized function in the form OpenVINO runs fastest (`openvino_graph`).
OPENVINO_GENERAL = "rvm-int8-openvino.onnx"
OPENVINO_FULL_RESOLUTION = "rvm-int8-openvino-ds1.onnx"
GRAPH_FILES = (GENERAL, FULL_RESOLUTION, OPENVINO_GENERAL, OPENVINO_FULL_RESOLUTION)


@dataclass(frozen=True)
class GraphForm:
    """Which function-preserving rewrites shape an exported graph (`rvm_graph`,
    `openvino_graph`): every form computes the same quantized function; each runtime runs one
    form fastest (measured by benchmarks/engine_forms.py)."""

    name: str
    merge_box_filters: bool = False
    pad_concat_convs: bool = False
    merged_upsampling: bool = False
    split_concat_convs: bool = False
    hard_sigmoid_as_clip: bool = False


ORT_FORM = GraphForm("ort", merge_box_filters=True, pad_concat_convs=True)
OPENVINO_FORM = GraphForm(
    "openvino", merged_upsampling=True, split_concat_convs=True, hard_sigmoid_as_clip=True
)
REPORT = "export.json"
STATE_ZERO = np.zeros((1, 1, 1, 1), np.float32)


@dataclass(frozen=True)
class ExportedGraphs:
    """An export: the general graph, the ratio-1 graph (ONNX Runtime's form), the same two in
    OpenVINO's form, and the export report (JSON object)."""

    directory: Path
    general: Path
    full_resolution: Path
    report: dict[str, Any]

    @property
    def openvino_general(self) -> Path:
        return self.directory / OPENVINO_GENERAL

    @property
    def openvino_full_resolution(self) -> Path:
        return self.directory / OPENVINO_FULL_RESOLUTION


def rewritten_graph(
    *, full_resolution: bool = False, root: Path | None = None, form: GraphForm = ORT_FORM
) -> tuple[GraphEditor, dict[str, rvm_graph.ConvSite]]:
    """The published FP32 graph after the `rvm_graph` rewrites of `form` (still float), and
    its convs: ONNX Runtime's form merges the box filters and pads concat convs to 4-channel
    multiples, OpenVINO's merges the tail's upsampling instead (see `openvino_graph`)."""
    editor = GraphEditor(rvm_graph.normalized(onnx.load(str(weights_path(root)))))
    sites = rvm_graph.conv_sites(editor, list(architecture(MODEL_NAME).convs))
    rvm_graph.drop_identity_split_concat(editor)
    if form.merge_box_filters:
        rvm_graph.merge_box_filters(editor, sites)
    rvm_graph.split_refiner_output(editor, merged_upsampling=form.merged_upsampling)
    if full_resolution:
        rvm_graph.specialise_full_resolution(editor)
    if form.pad_concat_convs:
        for site in sites.values():
            rvm_graph.pad_concat_conv(editor, site)
    return editor, sites


def build_graph(
    verified: Verified,
    *,
    full_resolution: bool = False,
    root: Path | None = None,
    form: GraphForm = ORT_FORM,
) -> onnx.ModelProto:
    """The QDQ graph of a verified artifact: its grids, nothing observed. Raises ExportError
    when the int8 kernels would need a grid the artifact does not carry. `root`: the cache
    root holding the weights."""
    manifest = verified.manifest
    if manifest.model != MODEL_NAME:
        raise qdq.ExportError(f"the exporter knows {MODEL_NAME!r}, not {manifest.model!r}")
    if manifest.base_weights_sha256 != RVM_WEIGHTS.sha256:
        raise qdq.ExportError(
            f"the artifact was calibrated from weights {manifest.base_weights_sha256[:12]}..., "
            f"this exporter builds on the published RVM graph {RVM_WEIGHTS.sha256[:12]}..."
        )
    editor, sites = rewritten_graph(full_resolution=full_resolution, root=root, form=form)
    ordered = list(sites.values())
    qdq.quantize_convs(editor, ordered, verified)
    qdq.require_grids(qdq.output_points(editor, ordered, verified))
    if form.split_concat_convs:
        openvino_graph.split_concat_convs(editor, ratio=1.0 if full_resolution else 0.5)
    if form.hard_sigmoid_as_clip:
        openvino_graph.hard_sigmoid_as_clip(editor)
    model = editor.to_model()
    model.producer_name = "ptq4vm"
    helper.set_model_props(
        model,
        {
            "ptq4vm.artifact": manifest.version_name,
            "ptq4vm.bits": manifest.bits,
            "ptq4vm.tensors_sha256": manifest.files[TENSORS_FILE],
            "ptq4vm.export_version": str(EXPORT_VERSION),
            "ptq4vm.full_resolution": str(full_resolution).lower(),
            "ptq4vm.form": form.name,
        },
    )
    onnx.checker.check_model(model)
    return model


def build_form(
    verified: Verified, form: GraphForm, root: Path | None = None
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The general and ratio-1 graphs of `form`."""
    general = build_graph(verified, root=root, form=form)
    return general, build_graph(verified, full_resolution=True, root=root, form=form)


def export_artifact(
    artifact: Verified | Path, out_dir: Path, *, root: Path | None = None
) -> ExportedGraphs:
    """Writes the graphs and `export.json` into `out_dir` (created; must not exist), through a
    temporary directory renamed into place, so a reader sees a complete export or none.
    `artifact`: verified already, or a path to verify now."""
    started = time.monotonic()
    verified = artifact if isinstance(artifact, Verified) else verify(Path(artifact))
    general, full = build_form(verified, ORT_FORM, root)
    ov_general, ov_full = build_form(verified, OPENVINO_FORM, root)
    manifest = verified.manifest
    quantize_nodes = sum(node.op_type == "QuantizeLinear" for node in ov_general.graph.node)
    report = {
        "export_version": EXPORT_VERSION,
        "artifact": manifest.version_name,
        "bits": manifest.bits,
        "tensors_sha256": manifest.files[TENSORS_FILE],
        "onnxruntime": ort.__version__,
        "opset": rvm_graph.OPSET,
        "float_output_layers": FLOAT_OUTPUT_LAYERS,
        "output_grids": sorted(n for n in manifest.sites if n.endswith(qdq.OUT_SITE_SUFFIX)),
        "openvino_quantize_nodes": quantize_nodes,
        "seconds": round(time.monotonic() - started, 2),
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True) as tmp:
        write_synced(tmp / GENERAL, general.SerializeToString())
        write_synced(tmp / FULL_RESOLUTION, full.SerializeToString())
        write_synced(tmp / OPENVINO_GENERAL, ov_general.SerializeToString())
        write_synced(tmp / OPENVINO_FULL_RESOLUTION, ov_full.SerializeToString())
        write_synced(tmp / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    logger.info(
        "exported %s (%s) to %s in %.1f s",
        manifest.version_name, manifest.bits, out_dir, report["seconds"],
    )  # fmt: skip
    return ExportedGraphs(out_dir, out_dir / GENERAL, out_dir / FULL_RESOLUTION, report)
