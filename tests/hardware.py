"""What the tests expect of this machine's CPU."""

from __future__ import annotations

from ptq4vm_core.engine.cpu import int8_dot_exact
from ptq4vm_core.engine.loader import int8_float_precision


def ort_int8(bits: str, *, safe: bool = False) -> str:
    """ONNX Runtime's int8 engine for an artifact of `bits`: on its exact u8u8 kernels where
    the u8 x s8 ones saturate (x86 without VNNI) and the artifact is not saturation-safe."""
    return f"ort-int8-{bits}" if int8_dot_exact() or safe else f"ort-int8-{bits}-u8u8"


def deployed_int8(bits: str, *, safe: bool = False) -> str:
    """The engine AUTO deploys an artifact of `bits` on: OpenVINO where its int8 convolutions
    are exact (VNNI, or a saturation-safe artifact), ONNX Runtime's u8u8 kernels where they
    saturate (x86 without VNNI); on OpenVINO, float parts at bf16 where the CPU has bf16."""
    if not (int8_dot_exact() or safe):
        return ort_int8(bits)
    return f"openvino-int8-{bits}" + ("-bf16" if int8_float_precision() == "bf16" else "")
