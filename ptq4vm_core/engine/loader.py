"""Resolve a MODEL name (`fp32`, a registry version, an artifact directory) to an engine."""

from __future__ import annotations

from pathlib import Path

from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine.base import Engine, EngineKind
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.paths import cache_root

FP32 = "fp32"


class ModelNotFoundError(Exception):
    """MODEL names nothing that can be loaded."""


def load_engine(
    model: str, kind: EngineKind | str = EngineKind.AUTO, *, root: Path | None = None
) -> Engine:
    """An engine for `model`. For `fp32` the deployed engine (AUTO) is ONNX Runtime on the
    published graph; TORCH is the PyTorch network with the same weights. For a quantized
    artifact AUTO (or ORT) is ONNX Runtime on its exported int8 graph (exported on first use,
    then cached); SIM is the PyTorch simulation that calibration optimised."""
    kind = EngineKind(kind)
    if model == FP32:
        if kind in (EngineKind.AUTO, EngineKind.ORT):
            return OrtEngine(weights_path(root), name="ort-fp32")
        if kind is EngineKind.TORCH:
            from ptq4vm_core.model import load_rvm_from_onnx

            return TorchEngine(load_rvm_from_onnx(weights_path(root)))
        raise ValueError(
            f"engine {kind.value!r} does not apply to the fp32 model; use auto, ort or torch"
        )
    path = resolve_artifact(model, root)
    if kind is EngineKind.TORCH:
        raise ValueError(
            f"engine {kind.value!r} does not apply to a quantized artifact; use auto (int8 "
            "ONNX Runtime, the deployed engine) or sim (the PyTorch simulation)"
        )
    if kind in (EngineKind.AUTO, EngineKind.ORT):
        from ptq4vm_core.artifact import verify_artifact
        from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine

        verify_artifact(path)  # refuse a tampered artifact before using any cached export
        return QuantizedOrtEngine(path, root=root)
    from ptq4vm_core.artifact import load_artifact

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
