"""What the tests expect of this machine's CPU."""

from __future__ import annotations

from ptq4vm_core.engine.cpu import int8_dot_exact


def deployed_int8(bits: str) -> str:
    """The engine AUTO deploys an artifact of `bits` on: OpenVINO where its int8 convolutions
    are exact, ONNX Runtime where they saturate (x86 without VNNI)."""
    return f"openvino-int8-{bits}" if int8_dot_exact() else f"ort-int8-{bits}"
