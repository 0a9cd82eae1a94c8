"""Engines: what runs a model fast (ONNX Runtime, PyTorch; int8 kernels for quantized models)."""

from ptq4vm_core.engine.base import Engine, EngineKind, EngineOutput
from ptq4vm_core.engine.loader import FP32, ModelNotFoundError, load_engine

__all__ = ["FP32", "Engine", "EngineKind", "EngineOutput", "ModelNotFoundError", "load_engine"]
