"""ONNX Runtime engine for graphs with RVM's signature (src, r1i..r4i, downsample_ratio)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from ptq4vm_core.engine.base import EngineOutput, Float32Array
from ptq4vm_core.model.matting import check_downsample_ratio

logger = logging.getLogger(__name__)

STATE_INPUTS = ("r1i", "r2i", "r3i", "r4i")


class OrtState(NamedTuple):
    """The four GRU states as the graph returns them (r1o..r4o), float32 arrays."""

    r1: Float32Array
    r2: Float32Array
    r3: Float32Array
    r4: Float32Array


def default_threads() -> int:
    """Intra-op threads: $PTQ4VM_THREADS, else every core the process may use."""
    env = os.environ.get("PTQ4VM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OrtEngine:
    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str = "ort-fp32",
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        chosen = [p for p in (providers or available) if p in available] or ["CPUExecutionProvider"]
        self._name = name
        self.session = ort.InferenceSession(str(model_path), options, providers=chosen)
        self._outputs = ["fgr", "pha", "r1o", "r2o", "r3o", "r4o"]
        logger.debug("ONNX Runtime session for %s on %s", model_path, chosen)

    @property
    def name(self) -> str:
        return self._name

    def infer(
        self, src: Float32Array, state: OrtState | None, downsample_ratio: float
    ) -> EngineOutput:
        ratio = check_downsample_ratio(downsample_ratio)
        src = np.ascontiguousarray(src, dtype=np.float32)
        if state is None:
            zero = np.zeros((src.shape[0], 1, 1, 1), np.float32)
            state = OrtState(zero, zero, zero, zero)
        feeds = {"src": src, "downsample_ratio": np.array([ratio], np.float32)}
        feeds.update(zip(STATE_INPUTS, state, strict=True))
        fgr, pha, r1, r2, r3, r4 = self.session.run(self._outputs, feeds)
        return EngineOutput(fgr, pha, OrtState(r1, r2, r3, r4))
