"""Shared fixtures: the real RVM weights and sample clip (fetched by `make setup`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP, fetch
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.model import MattingNetwork, load_rvm_from_onnx


@pytest.fixture(scope="session")
def weights_file() -> Path:
    return fetch(RVM_WEIGHTS)


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    return fetch(SAMPLE_CLIP)


@pytest.fixture(scope="session")
def clip_frames(sample_clip: Path) -> list[NDArray[np.uint8]]:
    """All 120 frames of the sample clip, [144,176,3] uint8 RGB."""
    return list(iter_frames(sample_clip))


@pytest.fixture(scope="session")
def rvm(weights_file: Path) -> MattingNetwork:
    return load_rvm_from_onnx(weights_file)
