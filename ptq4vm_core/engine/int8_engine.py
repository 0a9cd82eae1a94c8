"""The deployed engine of a quantized artifact: ONNX Runtime on its exported int8 QDQ graph."""

from __future__ import annotations

import logging
import threading
import time

from ptq4vm_core.engine.base import Float32Array, MaybeState, Output, StepEngine
from ptq4vm_core.engine.cache import optimized_path
from ptq4vm_core.engine.export.build import ExportedGraphs
from ptq4vm_core.engine.ort_engine import (
    U8U8_PRECISION,
    OrtEngine,
    default_providers,
    hardware_tag,
)

logger = logging.getLogger(__name__)


class QuantizedOrtEngine(StepEngine):
    """Runs an artifact on ONNX Runtime's int8 kernels (CPU; CUDA first where available).

    It takes the artifact's export (`cache.cached_export`), as OpenVINO does; the ratio-1 graph is
    used for downsample ratio exactly 1, the general graph otherwise (they compute the same
    function, so a stream may change ratio without losing its state). Sessions are created on
    first use and shared by all streams; the recurrent state is an `EngineState` passed in and
    returned, as with `OrtEngine`. `u8u8` runs ONNX Runtime's exact u8u8 kernels where its
    u8 x s8 ones saturate (`ort_engine.U8U8_PRECISION`; x86 without VNNI).
    """

    def __init__(
        self,
        graphs: ExportedGraphs,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        u8u8: bool = False,
    ) -> None:
        self.graphs = graphs
        self._u8u8 = u8u8
        suffix = "-u8u8" if u8u8 else ""
        self._name = f"ort-int8-{self.graphs.report['bits']}{suffix}"
        self._threads = threads
        self._providers = providers or default_providers()
        self._engines: dict[bool, OrtEngine] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def engine(self, full_resolution: bool) -> OrtEngine:
        """The session for the ratio-1 graph (`full_resolution`) or the general graph."""
        with self._lock:
            if full_resolution not in self._engines:
                started = time.monotonic()
                graph = self.graphs.full_resolution if full_resolution else self.graphs.general
                tag = hardware_tag(self._providers) + ("-u8u8" if self._u8u8 else "")
                self._engines[full_resolution] = OrtEngine(
                    graph,
                    name=self._name,
                    threads=self._threads,
                    providers=self._providers,
                    optimized=optimized_path(graph, tag),
                    config=U8U8_PRECISION if self._u8u8 else None,
                )
                logger.debug("session for %s in %.2f s", graph.name, time.monotonic() - started)
            return self._engines[full_resolution]

    def step(self, src: Float32Array, state: MaybeState, ratio: float, alpha_only: bool) -> Output:
        return self.engine(ratio == 1.0).infer(src, state, ratio, alpha_only=alpha_only)
