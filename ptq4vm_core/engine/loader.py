"""Resolve a MODEL name (`fp32`, a registry version, an artifact directory) to an engine."""

from __future__ import annotations

import logging
from pathlib import Path

from ptq4vm_core.artifact import load_artifact, verify_artifact
from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine.base import Engine, EngineKind
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.engine.openvino_engine import OpenVinoEngine, openvino_available
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)

FP32 = "fp32"


class ModelNotFoundError(Exception):
    """MODEL names nothing that can be loaded."""


def deployed_runtime() -> EngineKind:
    """The runtime AUTO means here: OpenVINO where it is installed and runs on this CPU (static
    shapes; measured faster than ONNX Runtime for both the FP32 and the int8 graphs, see
    docs/benchmarks/engine.md), else ONNX Runtime."""
    return EngineKind.OPENVINO if openvino_available() else EngineKind.ORT


def load_engine(
    model: str, kind: EngineKind | str = EngineKind.AUTO, *, root: Path | None = None
) -> Engine:
    """An engine for `model`.

    `fp32`: AUTO is the fastest runtime that keeps FP32 arithmetic (`deployed_runtime`: OpenVINO
    at f32 precision, else ONNX Runtime) on the published graph; ORT and OPENVINO choose the
    runtime; TORCH is the PyTorch network with the same weights.
    A quantized artifact: AUTO is its exported int8 QDQ graph (exported on first use, then
    cached) on `deployed_runtime`; ORT and OPENVINO choose; SIM is the PyTorch simulation that
    calibration optimised."""
    kind = EngineKind(kind)
    runtime = deployed_runtime() if kind is EngineKind.AUTO else kind
    if model == FP32:
        if runtime is EngineKind.OPENVINO:
            weights = weights_path(root)
            return OpenVinoEngine(
                {True: weights, False: weights},
                name="openvino-fp32",
                root=root,
                fallback=lambda: OrtEngine(weights, name="ort-fp32"),
            )
        if runtime is EngineKind.ORT:
            return OrtEngine(weights_path(root), name="ort-fp32")
        if runtime is EngineKind.TORCH:
            return TorchEngine(load_rvm_from_onnx(weights_path(root)))
        raise ValueError(
            f"engine {kind.value!r} does not apply to the fp32 model; use auto, ort, openvino "
            "or torch"
        )
    path = resolve_artifact(model, root)
    if runtime is EngineKind.TORCH:
        raise ValueError(
            f"engine {kind.value!r} does not apply to a quantized artifact; use auto (the "
            "deployed int8 engine), ort, openvino or sim (the PyTorch simulation)"
        )
    if runtime in (EngineKind.ORT, EngineKind.OPENVINO):
        verify_artifact(path)  # refuse a tampered artifact before using any cached export
        if runtime is EngineKind.ORT:
            return QuantizedOrtEngine(path, root=root)
        graphs = cached_export(path, root=root)
        bits = graphs.report["bits"]
        return OpenVinoEngine(
            {True: graphs.openvino_full_resolution, False: graphs.openvino_general},
            name=f"openvino-int8-{bits}",
            root=root,
            fallback=lambda: QuantizedOrtEngine(path, root=root),
        )
    artifact = load_artifact(path)
    return TorchEngine(artifact.model, name=f"sim-{artifact.manifest.bits}")


def resolve_artifact(model: str, root: Path | None = None) -> Path:
    """An artifact directory from a path or a registry version name."""
    path = Path(model)
    if path.is_dir():
        return path
    registered = (root or cache_root()) / "models" / model
    if "/" not in model and registered.is_dir():
        return registered
    raise ModelNotFoundError(
        f"unknown model {model!r}: expected 'fp32', a registry version or an artifact directory"
    )
