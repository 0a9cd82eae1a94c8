"""An admin calibration with uploaded alphas is labelled: the global stage gets the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.pipeline import split_clip
from server.calibration.protocol import ClipSpec
from tests.calib.test_synthetic import frame_dir


def test_an_admin_upload_with_alpha_calibrates_labelled(
    clip_frames: list[NDArray[np.uint8]], tmp_path: Path
) -> None:
    """The worker keeps an uploaded alpha beside its clip (com/ + pha/: the core pipeline's
    split, which the worker runs), so the calibration set carries it for the global stage."""
    truth = [np.full(f.shape[:2], 10 * i, np.uint8) for i, f in enumerate(clip_frames[:12])]
    spec = ClipSpec(
        video=frame_dir(tmp_path / "video", clip_frames[:12]),
        alpha=frame_dir(tmp_path / "alpha", truth, grey=True),
    )
    calib, _ = split_clip(spec.request_clip(), 0, tmp_path / "work", holdout=0.25, max_side=96)
    data = build_calibration_set([calib], frames=8, seq_len=4, max_side=96)
    assert bool(data.has_alpha.all())
    torch.testing.assert_close(data.alphas[1, :, 0, 0, 0], torch.tensor([40, 50, 60, 70]) / 255)
