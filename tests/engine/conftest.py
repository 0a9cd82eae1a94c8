"""Fixtures for the deployed-engine tests: a real (tiny) W8A8 calibration and its export.

MinMax on 4 frames at 64 px, as the artifact tests do: the exporter needs a genuinely
calibrated artifact, not a good one. Exports go to a per-session cache directory, never to
the user's cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ptq4vm_core.artifact import save_artifact
from ptq4vm_core.calib.calibrate import calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import Method, Profile
from ptq4vm_core.engine import cache
from ptq4vm_core.engine.cache import ENGINES_DIR, cached_export
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.model import MattingNetwork


def tiny_artifact(rvm: MattingNetwork, clip: Path, out: Path, **options: Any) -> Path:
    """A MinMax W8A8 calibration on 4 frames at 64 px (`options` go to `calibrate`)."""
    data = build_calibration_set([clip], frames=4, seq_len=2, max_side=64)
    result = calibrate(
        rvm, data, bits="w8a8", method=Method.MINMAX, profile=Profile.FAST,
        progress=lambda e: None, **options,
    )  # fmt: skip
    return save_artifact(result, data, out)


@pytest.fixture(scope="session")
def w8a8_artifact(
    rvm: MattingNetwork, sample_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return tiny_artifact(rvm, sample_clip, tmp_path_factory.mktemp("w8a8") / "artifact")


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for `$PTQ4VM_HOME/engines` (see `use_engine_cache`)."""
    return tmp_path_factory.mktemp("home") / ENGINES_DIR


@pytest.fixture
def use_engine_cache(engine_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Engines loaded by name (`load_engine`, the CLI) export into `engine_cache`."""
    monkeypatch.setattr(cache, "cache_root", lambda: engine_cache.parent)
    return engine_cache


@pytest.fixture(scope="session")
def int8_engine(w8a8_artifact: Path, engine_cache: Path) -> QuantizedOrtEngine:
    return QuantizedOrtEngine(cached_export(w8a8_artifact, cache=engine_cache))
