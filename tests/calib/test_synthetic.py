"""Labelled calibration clips synthesized from a real clip and the FP32 model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.synthetic import build_synthetic_clips
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.compose import composite
from ptq4vm_core.io.synthbg import calibration_backgrounds
from ptq4vm_core.io.video import iter_frames, read_alpha_frames
from ptq4vm_core.pipeline import matte_frames

FRAMES = 8


def frame_dir(path: Path, frames: list[NDArray[np.uint8]], grey: bool = False) -> Path:
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        image = frame if grey else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path / f"{i:04d}.png"), image)
    return path


@pytest.fixture(scope="module")
def short_clip(
    clip_frames: list[NDArray[np.uint8]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return frame_dir(tmp_path_factory.mktemp("clip") / "frames", clip_frames[:FRAMES])


def test_synthetic_clips_are_the_fp32_matte_over_calibration_backgrounds(
    short_clip: Path, tmp_path: Path
) -> None:
    engine = load_engine(FP32)
    clips = build_synthetic_clips(engine, short_clip, tmp_path / "syn", 3, seed=4)
    assert len({c.name for c in clips}) == 3
    mattes = list(matte_frames(engine, iter_frames(short_clip), 1.0))
    for clip, background in zip(clips, calibration_backgrounds(3, seed=4), strict=True):
        assert background.kind in clip.name
        alphas = list(read_alpha_frames(clip / "pha"))
        images = list(iter_frames(clip / "com"))
        assert len(alphas) == len(images) == FRAMES
        for index in (0, FRAMES - 1):
            fgr, pha = rgb_to_uint8(mattes[index].fgr), alpha_to_uint8(mattes[index].pha)
            assert np.array_equal(alphas[index], pha)  # exact ground truth, by construction
            height, width = pha.shape
            expected = composite(fgr, pha, background.frame(index, width, height))
            assert np.array_equal(images[index], expected)
    # Cached: a second call writes nothing and returns the same clips.
    stamp = (clips[0] / "pha" / "0000.png").stat().st_mtime_ns
    assert build_synthetic_clips(engine, short_clip, tmp_path / "syn", 3, seed=4) == clips
    assert (clips[0] / "pha" / "0000.png").stat().st_mtime_ns == stamp
    data = build_calibration_set([short_clip, *clips], frames=16, seq_len=4, max_side=96)
    assert data.has_alpha.tolist() == [False, True, True, True]
    assert float(data.alphas[1:].std()) > 0.1  # a person, not an empty matte
