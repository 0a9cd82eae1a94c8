"""Resolve a MODEL name (`fp32`, a registry version, an artifact directory) to an engine."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ptq4vm_core.artifact import load_artifact
from ptq4vm_core.artifact.saturation import saturation_report
from ptq4vm_core.artifact.verify import Verified, verify
from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine.base import Engine, EngineKind
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.engine.cpu import SATURATION_REASON, int8_dot_exact
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.engine.openvino_engine import (
    OpenVinoEngine,
    OpenVinoUnavailableError,
    Precision,
    cpu_has_bf16,
    openvino_available,
)
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)

FP32 = "fp32"


class ModelNotFoundError(Exception):
    """MODEL names nothing that can be loaded."""


def load_engine(
    model: str | Verified,
    kind: EngineKind | str = EngineKind.AUTO,
    *,
    root: Path | None = None,
    int8_precision: Precision | None = None,
) -> Engine:
    """An engine for `model`: a name, or an artifact verified already (`artifact.verify`: it is
    verified once, and its export and engines take that value).

    AUTO, for `fp32` and for a quantized artifact alike: OpenVINO with static shapes (faster
    than ONNX Runtime at every size measured, docs/benchmarks/engine.md), ONNX Runtime where
    OpenVINO is missing or finds no CPU. `fp32` runs the published graph at f32
    precision on either runtime (the fastest that keeps FP32 arithmetic), an artifact its
    exported int8 QDQ graph (exported on first use, then cached) on OpenVINO where its int8
    convolutions are exact: on every CPU for a saturation-safe artifact (computed from its
    integers, `artifact.saturation`: the `avx2` target's), and for any other only where the
    CPU has VNNI (`cpu.int8_dot_exact`); elsewhere AUTO is ONNX Runtime on its exact u8u8
    kernels and OPENVINO is refused with the reason. On OpenVINO the int8 graph's float parts
    run at `int8_precision` (default: `int8_float_precision()`, bf16 where the CPU has it). ORT
    and OPENVINO choose the runtime; TORCH is the PyTorch FP32 network; SIM the PyTorch
    simulation of an artifact."""
    kind = EngineKind(kind)
    if model == FP32:
        weights = weights_path(root)
        ort = lambda: OrtEngine(weights, name="ort-fp32")  # noqa: E731
        openvino = lambda: OpenVinoEngine(  # noqa: E731
            {True: weights, False: weights}, name="openvino-fp32", root=root, fallback=ort
        )
        if kind is EngineKind.TORCH:
            return TorchEngine(load_rvm_from_onnx(weights))
        if kind is EngineKind.SIM:
            raise ValueError(
                f"engine {kind.value!r} does not apply to the fp32 model; use auto, ort, "
                "openvino or torch"
            )
        return _pick(kind, ort, openvino)
    path = model.path if isinstance(model, Verified) else resolve_artifact(model, root)
    if kind is EngineKind.TORCH:
        raise ValueError(
            f"engine {kind.value!r} does not apply to a quantized artifact; use auto (the "
            "deployed int8 engine), ort, openvino or sim (the PyTorch simulation)"
        )
    if kind is EngineKind.SIM:
        artifact = load_artifact(path)
        return TorchEngine(artifact.model, name=f"sim-{artifact.manifest.bits}")
    # The artifact verified once (a tampered one is refused before any cached export is used);
    # from its integers, whether kernels without VNNI can saturate on it.
    verified = model if isinstance(model, Verified) else verify(path)
    saturation = saturation_report(verified)
    saturates = not int8_dot_exact() and not saturation.safe
    if saturates and kind is not EngineKind.ORT:
        reason = f"{SATURATION_REASON}; this artifact is not saturation-safe: {saturation.reason()}"
        if kind is EngineKind.OPENVINO:
            raise OpenVinoUnavailableError(
                f"{reason}; use --engine auto or ort, or calibrate with --int8-target avx2"
            )
        logger.warning("%s: the int8 model runs on ONNX Runtime", reason)
        kind = EngineKind.ORT
    graphs = cached_export(verified, root=root)
    bits = graphs.report["bits"]
    # Where ONNX Runtime's u8 x s8 kernels saturate on this artifact, its exact u8u8 kernels
    # (about 5% slower on RVM, docs/engine.md).
    ort_int8 = lambda: QuantizedOrtEngine(graphs, u8u8=saturates)  # noqa: E731

    def openvino_int8() -> Engine:
        precision = int8_precision or int8_float_precision()
        return OpenVinoEngine(
            {True: graphs.openvino_full_resolution, False: graphs.openvino_general},
            name=f"openvino-int8-{bits}" + ("-bf16" if precision == "bf16" else ""),
            precision=precision,
            root=root,
            fallback=ort_int8,
        )

    return _pick(kind, ort_int8, openvino_int8)


def int8_float_precision() -> Precision:
    """The precision OpenVINO runs the float parts of an int8 graph at (hard-swish, SE gates,
    the GRUs, resizes, the guided-filter tail; the int8 convs are integer either way):
    $PTQ4VM_INT8_FLOAT_PRECISION (`f32` or `bf16`), else `bf16` where the CPU has bf16 units
    (faster at every size of docs/benchmarks/engine-vnni.md, quality and parity in its tables)
    and `f32` elsewhere."""
    wanted = int8_precision_setting()
    return "bf16" if wanted != "f32" and cpu_has_bf16() else "f32"


def int8_precision_setting() -> str:
    """$PTQ4VM_INT8_FLOAT_PRECISION as given: `auto` (unset), `f32` or `bf16`; ValueError for
    anything else (checked without asking the CPU)."""
    wanted = os.environ.get("PTQ4VM_INT8_FLOAT_PRECISION", "auto").strip().lower()
    if wanted not in ("auto", "f32", "bf16"):
        raise ValueError(f"PTQ4VM_INT8_FLOAT_PRECISION={wanted!r}: expected auto, f32 or bf16")
    return wanted


def _pick(kind: EngineKind, ort: Callable[[], Engine], openvino: Callable[[], Engine]) -> Engine:
    """ORT, OPENVINO, or AUTO: OpenVINO where it runs (faster than ONNX Runtime at every size
    of benchmarks/engine.py), else ONNX Runtime. Never a per-shape measured choice: processes
    with different caches could choose differently, and their mattes then differ by an alpha
    level at rare pixels."""
    if kind is EngineKind.ORT or (kind is EngineKind.AUTO and not openvino_available()):
        return ort()
    return openvino()


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
