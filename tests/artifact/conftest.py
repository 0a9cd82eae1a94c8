"""Fixtures for the artifact tests: two real calibrations (w8a8, w4a4) and their artifacts.

Calibration runs MinMax on a tiny calibration set (4 frames at 64 px): the artifact code only
needs a genuinely calibrated model, not a good one. Each bit width is calibrated once per
session and saved once; tests that modify an artifact work on a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from ptq4vm_core.artifact import save_artifact
from ptq4vm_core.calib.calibrate import CalibrationResult, calibrate
from ptq4vm_core.calib.data import CalibrationSet, build_calibration_set
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.model import MattingNetwork, MattingOutput


def run_frames(
    model: torch.nn.Module, frames: list[NDArray[np.uint8]], count: int = 4
) -> list[MattingOutput]:
    """The model over the first `count` frames, one at a time, the recurrent state carried."""
    outs: list[MattingOutput] = []
    state = None
    with torch.no_grad():
        for frame in frames[:count]:
            src = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255)
            out = model(src, state)
            state = out.state
            outs.append(out)
    return outs


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def calib_data(sample_clip: Path) -> CalibrationSet:
    return build_calibration_set([sample_clip], frames=4, seq_len=2, max_side=64)


def _calibrate(rvm: MattingNetwork, data: CalibrationSet, bits: str) -> CalibrationResult:
    return calibrate(
        rvm,
        data,
        bits=bits,
        method=Method.MINMAX,
        profile=Profile.FAST,
        progress=lambda event: None,
    )


@pytest.fixture(scope="session")
def w8a8(rvm: MattingNetwork, calib_data: CalibrationSet) -> CalibrationResult:
    return _calibrate(rvm, calib_data, "w8a8")


@pytest.fixture(scope="session")
def w4a4(rvm: MattingNetwork, calib_data: CalibrationSet) -> CalibrationResult:
    return _calibrate(rvm, calib_data, "w4a4")


@pytest.fixture(scope="session")
def w8a8_dir(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The saved w8a8 artifact; read-only for tests (copy it to modify it)."""
    return save_artifact(w8a8, calib_data, tmp_path_factory.mktemp("w8") / "artifact")


@pytest.fixture(scope="session")
def w4a4_dir(
    w4a4: CalibrationResult, calib_data: CalibrationSet, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return save_artifact(w4a4, calib_data, tmp_path_factory.mktemp("w4") / "artifact")


@pytest.fixture
def w8a8_copy(w8a8_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the w8a8 artifact, free to tamper with."""
    return copy_artifact(w8a8_dir, tmp_path / "copy")
