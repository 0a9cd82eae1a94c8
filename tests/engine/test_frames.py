"""The conversions every served frame goes through: exact, whatever the frame's layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ptq4vm_core.engine.frames import alpha_to_uint8, frames_to_batch, infer_frames
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.io.compose import to_uint8

SCALE = np.float32(1.0 / 255.0)


def multiplied(frames: list[np.ndarray]) -> np.ndarray:
    """The definition: x * float32(1/255) in float32, channels first."""
    return np.stack([np.multiply(f.transpose(2, 0, 1), SCALE, dtype=np.float32) for f in frames])


def rounded(x: np.ndarray) -> np.ndarray:
    """The definition of to_uint8: x * 255 in x's precision, NaN -> 0, clipped, ties to even."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = x * np.asarray(255, dtype=x.dtype)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def test_every_byte_value_converts_as_the_multiplication() -> None:
    every = np.arange(3 * 256).reshape(16, 16, 3).astype(np.uint8)
    np.testing.assert_array_equal(frames_to_batch([every]), multiplied([every]))


@pytest.mark.parametrize(
    "layout", ["contiguous", "bgr reversed view", "read-only buffer", "cropped view", "1x1"]
)
def test_any_layout_converts_alike(layout: str) -> None:
    frame = np.random.default_rng(7).integers(0, 256, (36, 52, 3), dtype=np.uint8)
    view = {
        "contiguous": frame,
        "bgr reversed view": frame[..., ::-1],
        "read-only buffer": np.frombuffer(frame.tobytes(), np.uint8).reshape(frame.shape),
        "cropped view": frame[3:20, 5:41],
        "1x1": frame[:1, :1],
    }[layout]
    np.testing.assert_array_equal(
        frames_to_batch([view, view[::-1]]), multiplied([view, view[::-1]])
    )


def test_frames_of_other_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one size"):
        frames_to_batch([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        frames_to_batch([])


def test_float32_to_uint8_is_the_definition_bit_for_bit() -> None:
    # Every float32 in [0, 1] near a rounding tie (k + 0.5) / 255 and a spread of others, both
    # sides of the range, the specials, and the huge values that overflow x * 255.
    ties = (np.arange(255, dtype=np.float64) + 0.5) / 255
    near = np.concatenate([np.nextafter(ties.astype(np.float32), d) for d in (-1, 0, 1, 2)])
    near = np.concatenate([near, ties.astype(np.float32)])
    for _ in range(3):
        near = np.concatenate([near, np.nextafter(near, np.float32(2)), np.nextafter(near, 0)])
    spread = np.random.default_rng(3).uniform(-0.5, 1.5, 500_000).astype(np.float32)
    specials = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 3e38, -3e38, 1e7, -1e7], np.float32
    )
    x = np.concatenate([near, spread, specials])
    np.testing.assert_array_equal(to_uint8(x), rounded(x))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, (1 << 18) - 1, 1 << 18, (1 << 18) + 1])
def test_float32_to_uint8_at_any_size(size: int) -> None:
    # 1-4 values: OpenCV would take a 1-d array that short for a scalar; chunk edges at 2^18.
    x = np.random.default_rng(size).uniform(-0.1, 1.1, size).astype(np.float32)
    np.testing.assert_array_equal(to_uint8(x), rounded(x))
    np.testing.assert_array_equal(to_uint8(x.reshape(1, -1, 1)), rounded(x).reshape(1, -1, 1))


def test_alpha_and_transposed_views_convert_alike() -> None:
    pha = np.random.default_rng(1).random((1, 1, 30, 40), dtype=np.float32)
    np.testing.assert_array_equal(alpha_to_uint8(pha), rounded(pha.reshape(30, 40)))
    chw = np.random.default_rng(2).random((3, 30, 40), dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(chw.transpose(1, 2, 0)), rounded(chw).transpose(1, 2, 0))
    assert to_uint8(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_engines_without_frames_get_the_float_batch(weights_file) -> None:
    """An engine that takes no frames (ONNX Runtime) is given `frames_to_batch` of them: the
    same bytes in, the same mattes out, batched frames included."""
    engine = OrtEngine(weights_file)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 32, 48, 3), np.uint8)
    got = infer_frames(engine, frames, None, 1.0, alpha_only=True)
    expected = engine.infer(frames_to_batch(list(frames)), None, 1.0, alpha_only=True)
    np.testing.assert_array_equal(got.pha, expected.pha)
    for a, b in zip(got.state, expected.state, strict=True):
        np.testing.assert_array_equal(a, b)
    bad_frames: list[Any] = [frames.astype(np.float32), frames[0], frames[..., :2]]
    for bad in bad_frames:
        with pytest.raises(ValueError, match="frames must be uint8"):
            infer_frames(engine, bad, None, 1.0)
