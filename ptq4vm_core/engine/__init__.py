"""Engines: what runs a model fast. The runtimes: OpenVINO (the default where it runs), ONNX
Runtime and PyTorch, FP32 and int8, with what they share in `runtime` (state names, threads,
the thread budget); `loader` picks one for a model. The export (`export/`) turns an artifact
into the graphs they load."""

from ptq4vm_core.engine.base import Engine, EngineKind, EngineOutput
from ptq4vm_core.engine.loader import FP32, ModelNotFoundError, load_engine

__all__ = ["FP32", "Engine", "EngineKind", "EngineOutput", "ModelNotFoundError", "load_engine"]
