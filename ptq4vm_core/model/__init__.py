"""Robust Video Matting (MobileNetV3-Large) in PyTorch, BN-folded like its ONNX release."""

from ptq4vm_core.model.matting import MattingNetwork, MattingOutput
from ptq4vm_core.model.state import RecurrentState
from ptq4vm_core.model.weights import load_rvm_from_onnx

__all__ = ["MattingNetwork", "MattingOutput", "RecurrentState", "load_rvm_from_onnx"]
