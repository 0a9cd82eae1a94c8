"""The deployed int8 engine against the simulation it deploys, on the sample clip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from typer.testing import CliRunner

from ptq4vm_core.artifact import load_artifact
from ptq4vm_core.cli.main import app
from ptq4vm_core.engine import Engine, EngineKind, load_engine
from ptq4vm_core.engine import loader as engine_loader
from ptq4vm_core.engine.base import EngineState
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.engine.cpu import int8_dot_exact
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.int8_engine import QuantizedOrtEngine
from ptq4vm_core.engine.torch_engine import TorchEngine
from tests.hardware import deployed_int8, ort_int8

ONE_LEVEL = 1 / 255


def alpha_diffs(
    a: Engine, b: Engine, frames: list[NDArray[np.uint8]], ratio: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per frame mean and max |alpha_a - alpha_b|, each engine carrying its own state."""
    state_a = state_b = None
    means, maxes = [], []
    for frame in frames:
        src = frames_to_batch([frame])
        out_a, out_b = a.infer(src, state_a, ratio), b.infer(src, state_b, ratio)
        state_a, state_b = out_a.state, out_b.state
        diff = np.abs(out_a.pha - out_b.pha)
        means.append(float(diff.mean()))
        maxes.append(float(diff.max()))
    return np.asarray(means), np.asarray(maxes)


@pytest.fixture(scope="module")
def sim(w8a8_artifact: Path) -> Iterator[TorchEngine]:
    # One PyTorch thread: interleaved with ONNX Runtime's spinning pool on a small shared
    # machine, PyTorch's own pool ran the simulation 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield TorchEngine(load_artifact(w8a8_artifact).model, name="sim-w8a8")
    finally:
        torch.set_num_threads(threads)


def check_parity(means: NDArray[np.float64], window: int) -> None:
    # Within one alpha level on average, and no drift: the error does not grow along the clip.
    assert means.mean() <= ONE_LEVEL, means
    assert means[-window:].mean() <= means[:window].mean() + 0.25 * ONE_LEVEL, means


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_parity_with_the_simulation(
    int8_engine: QuantizedOrtEngine, sim: TorchEngine, clip_frames, ratio: float
) -> None:
    # Ratio 1 runs the specialised graph, other ratios the general one.
    frames = 20 if ratio == 1.0 else 8
    means, _ = alpha_diffs(int8_engine, sim, clip_frames[:frames], ratio)
    check_parity(means, window=frames // 4)


@pytest.mark.slow
def test_parity_over_the_whole_clip(
    int8_engine: QuantizedOrtEngine, sim: TorchEngine, clip_frames
) -> None:
    means, _ = alpha_diffs(int8_engine, sim, clip_frames, 1.0)
    assert len(means) == 120
    check_parity(means, window=20)


def test_state_is_carried_across_calls_and_sessions(
    int8_engine: QuantizedOrtEngine, w8a8_artifact: Path, engine_cache: Path, clip_frames
) -> None:
    frames = [frames_to_batch([f]) for f in clip_frames[:8]]
    state = None
    for src in frames:
        whole = int8_engine.infer(src, state, 1.0)
        state = whole.state
    # Two halves, the second on a new engine (its session comes from the cached optimised
    # graph), the state handed over in between: the same matte as one run.
    state = None
    for src in frames[:4]:
        state = int8_engine.infer(src, state, 1.0).state
    assert isinstance(state, EngineState)
    resumed = QuantizedOrtEngine(cached_export(w8a8_artifact, cache=engine_cache))
    for src in frames[4:]:
        half = resumed.infer(src, state, 1.0)
        state = half.state
    np.testing.assert_array_equal(half.pha, whole.pha)
    np.testing.assert_array_equal(half.state.r4, whole.state.r4)


def test_batch_of_streams_equals_streams_one_by_one(
    int8_engine: QuantizedOrtEngine, clip_frames
) -> None:
    batch = int8_engine.infer(frames_to_batch([clip_frames[0], clip_frames[60]]), None, 0.5)
    for i, index in enumerate((0, 60)):
        single = int8_engine.infer(frames_to_batch([clip_frames[index]]), None, 0.5)
        np.testing.assert_allclose(batch.pha[i], single.pha[0], atol=1e-5)
    assert batch.pha.shape == (2, 1, 144, 176)
    assert batch.foreground().dtype == np.float32


def test_auto_is_the_int8_engine_and_sim_the_simulation(
    w8a8_artifact: Path, use_engine_cache: Path
) -> None:
    # AUTO: the int8 graph on OpenVINO where it runs and its int8 convolutions are exact
    # (tests/engine/test_openvino.py checks the fallbacks to ONNX Runtime).
    assert load_engine(str(w8a8_artifact)).name == deployed_int8("w8a8")
    if int8_dot_exact():
        assert load_engine(str(w8a8_artifact), EngineKind.OPENVINO).name == deployed_int8("w8a8")
    assert load_engine(str(w8a8_artifact), EngineKind.ORT).name == ort_int8("w8a8")
    assert load_engine(str(w8a8_artifact), EngineKind.SIM).name == "sim-w8a8"
    with pytest.raises(ValueError, match="does not apply to a quantized artifact"):
        load_engine(str(w8a8_artifact), EngineKind.TORCH)


def test_openvino_refused_where_int8_saturates_is_one_line(
    w8a8_artifact: Path, use_engine_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_loader, "int8_dot_exact", lambda: False)
    result = CliRunner().invoke(
        app,
        ["bench", "--model", str(w8a8_artifact), "--engine", "openvino", "--size", "176x144",
         "--frames", "1", "--warmup", "0"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "saturate" in result.output
    assert "--engine auto or ort" in result.output
    assert "Traceback" not in result.output


def test_bench_json_schema(w8a8_artifact: Path, use_engine_cache: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "--model", str(w8a8_artifact), "--size", "176x144", "--downsample", "1.0",
         "--frames", "3", "--warmup", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    expected = {
        "model": str, "engine": str, "size": str, "downsample_ratio": float, "frames": int,
        "fps": float, "ms_mean": float, "ms_p50": float, "ms_p90": float, "ms_p99": float,
        "ms_max": float, "threads": int,
    }  # fmt: skip
    assert set(report) == set(expected)
    for key, kind in expected.items():
        assert isinstance(report[key], kind), (key, report[key])
    assert report["engine"] == deployed_int8("w8a8")
    assert (report["size"], report["frames"]) == ("176x144", 3)
    assert report["fps"] > 0
    assert report["ms_p50"] <= report["ms_p99"] <= report["ms_max"]
