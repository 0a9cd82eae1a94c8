"""The PyTorch network against ONNX Runtime on the published graph, over the whole sample clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from ptq4vm_core.model import MattingNetwork

# The smallest and the deployed 720p shape by default; the 512x288 pair (40 s) in test-slow.
CASES = [
    (176, 144, 1.0),
    pytest.param(512, 288, 1.0, marks=pytest.mark.slow),
    pytest.param(512, 288, 0.5, marks=pytest.mark.slow),
    (1280, 720, 0.375),
]


@pytest.mark.parametrize(("width", "height", "ratio"), CASES)
def test_parity_with_onnx_runtime(
    rvm: MattingNetwork,
    weights_file: Path,
    clip_frames,
    width: int,
    height: int,
    ratio: float,
) -> None:
    torch_engine, ort_engine = TorchEngine(rvm), OrtEngine(weights_file)
    torch_state = ort_state = None
    worst = 0.0
    total, count = 0.0, 0
    for frame in clip_frames:
        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        src = frames_to_batch([frame])
        ours = torch_engine.infer(src, torch_state, ratio)
        theirs = ort_engine.infer(src, ort_state, ratio)
        torch_state, ort_state = ours.state, theirs.state
        for a, b in ((ours.pha, theirs.pha), (ours.foreground(), theirs.foreground())):
            diff = np.abs(a - b)
            worst = max(worst, float(diff.max()))
            total += float(diff.sum())
            count += diff.size
    mean = total / count
    print(
        f"\nparity {width}x{height} ds {ratio}: {len(clip_frames)} frames, "
        f"max |diff| {worst:.3e}, mean |diff| {mean:.3e} (alpha and foreground)"
    )
    assert len(clip_frames) == 120
    assert worst <= 1e-3
    assert mean <= 1e-5
