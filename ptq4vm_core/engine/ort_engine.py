"""ONNX Runtime engine for graphs with RVM's signature (src, r1i..r4i, downsample_ratio)."""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ptq4vm_core.engine.base import EngineState, Float32Array, MaybeState, Output, StepEngine
from ptq4vm_core.engine.cpu import cpu_flags
from ptq4vm_core.engine.runtime import BUDGET, OUTPUTS, STATE_INPUTS, default_threads
from ptq4vm_core.files import atomic_path

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


# ONNX Runtime's session entry (kOrtSessionOptionsAvx2PrecisionMode) that, on x86 CPUs whose
# u8 x s8 kernels saturate (no VNNI), rewrites the int8 weights of its quantized convs and
# matmuls to u8 and runs them on the u8u8 kernels, which widen to 16 bits before multiplying:
# exact, and slower. No effect where the CPU has VNNI or is not x86.
U8U8_PRECISION = {"session.x64quantprecision": "1"}


def default_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, the CPU always as the fallback."""
    available = ort.get_available_providers()
    return [p for p in (CUDA, CPU) if p in available] or [CPU]


def session_options(
    threads: int | None = None, config: Mapping[str, str] | None = None
) -> ort.SessionOptions:
    """Every optimisation on, one intra-op pool of `threads` (default: all usable cores), no
    inter-op parallelism (the graph is a chain), warnings only; `config`: session config
    entries (e.g. `U8U8_PRECISION`)."""
    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def hardware_tag(providers: list[str]) -> str:
    """What an optimised graph depends on: the onnxruntime version, the providers and the CPU
    (ORT_ENABLE_ALL lays out tensors for the instruction set it finds)."""
    flags = " ".join(sorted(cpu_flags())) or platform.processor()
    cpu = hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]
    names = "+".join(p.removesuffix("ExecutionProvider").lower() for p in providers)
    return f"ort{ort.__version__}-{names}-{cpu}"


def create_session(
    model_path: Path,
    options: ort.SessionOptions,
    providers: list[str],
    optimized: Path | None = None,
) -> ort.InferenceSession:
    """A session for `model_path`. With `optimized`, the graph as ONNX Runtime optimised it is
    kept there (written atomically on first use) and loaded from there later, which skips the
    graph optimisation at start-up."""
    if optimized is not None and optimized.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(optimized), options, providers=providers)
    if optimized is None:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    with atomic_path(optimized) as tmp:
        options.optimized_model_filepath = str(tmp)
        return ort.InferenceSession(str(model_path), options, providers=providers)


class OrtEngine(StepEngine):
    """Runs an ONNX graph with RVM's inputs and outputs. Keeps no per-stream data.

    One session per thread count in use (see `ThreadBudget`), created on first need; they
    compute the same function, so a stream may move between them without losing its state."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str = "ort-fp32",
        threads: int | None = None,
        providers: list[str] | None = None,
        optimized: Path | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        available = ort.get_available_providers()
        self._config = dict(config or {})
        self._providers = [p for p in (providers or default_providers()) if p in available] or [CPU]
        self._name = name
        self._path = Path(model_path)
        self._optimized = optimized
        self.threads = threads or default_threads()
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.session = self.session_for(self.threads)
        logger.debug("ONNX Runtime session for %s on %s", model_path, self._providers)

    @property
    def name(self) -> str:
        return self._name

    def session_for(self, threads: int) -> ort.InferenceSession:
        with self._lock:
            if threads not in self._sessions:
                options = session_options(threads, self._config)
                self._sessions[threads] = create_session(
                    self._path, options, self._providers, self._optimized
                )
            return self._sessions[threads]

    def step(self, src: Float32Array, state: MaybeState, ratio: float, alpha_only: bool) -> Output:
        if state is None:
            zero = np.zeros((src.shape[0], 1, 1, 1), np.float32)
            state = EngineState(zero, zero, zero, zero)
        feeds = {"src": src, "downsample_ratio": np.array([ratio], np.float32)}
        feeds.update(zip(STATE_INPUTS, state, strict=True))
        session = self.session_for(BUDGET.threads(self.threads))
        if alpha_only:  # ONNX Runtime runs only what the fetched outputs need
            pha, r1, r2, r3, r4 = session.run(list(OUTPUTS[1:]), feeds)
            return Output(None, pha, EngineState(r1, r2, r3, r4))
        fgr, pha, r1, r2, r3, r4 = session.run(list(OUTPUTS), feeds)
        return Output(fgr, pha, EngineState(r1, r2, r3, r4))
