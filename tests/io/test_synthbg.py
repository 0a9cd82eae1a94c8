"""The calibration backgrounds: seeded, moving, varied, and never the evaluation ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ptq4vm_core.io.evalclip import BACKGROUNDS, moving_background
from ptq4vm_core.io.synthbg import (
    CALIBRATION_BACKGROUNDS,
    SyntheticBackground,
    calibration_backgrounds,
)

W, H = 96, 72
FRAMES = range(0, 120, 7)


def test_the_families_are_disjoint() -> None:
    """No calibration frame comes near any evaluation frame: by name, and in pixels (every pair
    of frames of the two families, any frame index, differs by a large mean and is not
    correlated), while two frames of one evaluation clip a few frames apart are close."""
    assert not set(CALIBRATION_BACKGROUNDS) & set(BACKGROUNDS)
    for kind in BACKGROUNDS:
        with pytest.raises(ValueError, match="evaluation family"):
            SyntheticBackground(kind, 0)
    evals = [moving_background(k, i, W, H).astype(np.float32) for k in BACKGROUNDS for i in FRAMES]
    calib = [b.frame(i, W, H).astype(np.float32) for b in calibration_backgrounds(6, seed=0)
             for i in FRAMES]  # fmt: skip

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))

    nearest = min(float(np.abs(c - e).mean()) for c, e in itertools.product(calib, evals))
    most_alike = max(corr(c, e) for c, e in itertools.product(calib, evals))
    same_clip = max(
        float(
            np.abs(
                moving_background(k, 0, W, H) - moving_background(k, 1, W, H).astype(np.float32)
            ).mean()
        )
        for k in BACKGROUNDS
    )
    assert nearest > 2 * same_clip, (nearest, same_clip)
    assert nearest > 20, nearest  # of 255
    assert most_alike < 0.6, most_alike


def test_seeded_moving_and_varied() -> None:
    backgrounds = calibration_backgrounds(6, seed=1)
    assert [b.kind for b in backgrounds] == [*CALIBRATION_BACKGROUNDS] * 2
    assert len({(b.kind, b.seed) for b in backgrounds}) == 6
    for background in backgrounds:
        again = SyntheticBackground(background.kind, background.seed)
        first = background.frame(5, W, H)
        assert first.shape == (H, W, 3)
        assert first.dtype == np.uint8
        assert np.array_equal(first, again.frame(5, W, H))  # reproducible
        moved = np.abs(first.astype(int) - background.frame(25, W, H)).mean()
        assert moved > 3, (background, moved)  # camera motion, moving shapes, light
        assert first.std() > 8, background  # not a flat colour
    other_seed = calibration_backgrounds(1, seed=2)[0].frame(5, W, H)
    assert np.abs(other_seed.astype(int) - backgrounds[0].frame(5, W, H)).mean() > 5


def test_bad_choices_are_named() -> None:
    with pytest.raises(ValueError, match="texture, clutter, bokeh"):
        SyntheticBackground("plaid", 0)
    with pytest.raises(ValueError, match="count=-1"):
        calibration_backgrounds(-1)
