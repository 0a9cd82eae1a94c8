from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ptq4vm_core.assets import SAMPLE_CLIP
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.io.video import VideoReadError


def test_sequences_are_consecutive_frames_of_the_clip(sample_clip: Path, clip_frames) -> None:
    data = build_calibration_set([sample_clip], frames=32, seq_len=8, max_side=176)
    assert data.frames.shape == (4, 8, 3, 144, 176)
    assert float(data.frames.min()) >= 0.0
    assert float(data.frames.max()) <= 1.0
    # 120 frames give 15 plain windows: the first sequences are the clip itself, in order.
    first = torch.from_numpy(np.stack(clip_frames[:8])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(data.frames[0], first)
    second = torch.from_numpy(np.stack(clip_frames[8:16])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(data.frames[1], second)
    assert not bool(data.has_alpha.any())
    prov = data.provenance()
    assert prov["clips"] == [
        {"path": str(sample_clip), "sha256": SAMPLE_CLIP.sha256, "ground_truth": False}
    ]


def test_short_clips_are_stretched_by_augmentation(sample_clip: Path) -> None:
    data = build_calibration_set([sample_clip], frames=256, seq_len=8, max_side=176, seed=3)
    assert data.num_sequences == 32
    # 15 plain windows, then augmented ones: all distinct.
    flat = data.frames.flatten(1)
    distances = torch.cdist(flat[:, :5000], flat[:, :5000])
    assert float(distances[~torch.eye(32, dtype=torch.bool)].min()) > 0
    again = build_calibration_set([sample_clip], frames=256, seq_len=8, max_side=176, seed=3)
    assert torch.equal(data.frames, again.frames)  # seeded: reproducible


def test_ground_truth_alpha_rides_along(tmp_path: Path, clip_frames) -> None:
    clip = tmp_path / "clip"
    (clip / "com").mkdir(parents=True)
    (clip / "pha").mkdir()
    for i, frame in enumerate(clip_frames[:12]):
        cv2.imwrite(str(clip / "com" / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        alpha = np.full(frame.shape[:2], i * 20, np.uint8)
        cv2.imwrite(str(clip / "pha" / f"{i:04d}.png"), alpha)
    data = build_calibration_set([clip], frames=8, seq_len=4, max_side=176)
    assert bool(data.has_alpha.all())
    # Alpha follows its frame through the windows (frame i has alpha i*20 everywhere).
    torch.testing.assert_close(data.alphas[0, :, 0, 0, 0], torch.tensor([0, 20, 40, 60]) / 255)


def test_clear_errors(tmp_path: Path, sample_clip: Path) -> None:
    with pytest.raises(VideoReadError, match="not found"):
        build_calibration_set([tmp_path / "missing.mp4"])
    with pytest.raises(ValueError, match="no calibration clips"):
        build_calibration_set([])
    with pytest.raises(ValueError, match="frames >= seq_len"):
        build_calibration_set([sample_clip], frames=4, seq_len=8)
