"""Evaluation clips with exact ground truth: a foreground and its alpha over a moving background.

RVM's evaluation sets are composites (I = a F + (1 - a) B) of matted foregrounds over new
backgrounds, which makes the alpha exact by construction. This module does the same with any
foreground/alpha pair and a procedural background that pans and changes over time, so
temporal metrics (dtSSD) see real motion behind the subject.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.io.compose import composite

BACKGROUNDS = ("stripes", "blobs")


def moving_background(
    kind: str, index: int, width: int, height: int, *, speed: float = 3.0
) -> NDArray[np.uint8]:
    """Frame `index` of a procedural background [H,W,3] uint8 that pans `speed` px a frame."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    shift = index * speed
    if kind == "stripes":
        phase = (x + shift) / 11.0 + y / 23.0
        r = 0.5 + 0.5 * np.sin(phase)
        g = 0.5 + 0.5 * np.sin(phase * 0.7 + 2.0)
        b = 0.5 + 0.5 * np.cos((y - shift * 0.5) / 17.0)
    elif kind == "blobs":
        cx, cy = width * (0.3 + 0.2 * np.sin(index / 15.0)), height * 0.5
        d = np.hypot(x - cx, y - cy) / max(width, height)
        r = 0.5 + 0.5 * np.cos(d * 18.0 - index / 4.0)
        g = 0.4 + 0.4 * np.sin((x - shift) / 29.0) * np.cos(y / 19.0)
        b = 0.6 - 0.4 * d
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    image = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def write_eval_clip(
    out_dir: Path,
    foregrounds: Iterable[NDArray[np.uint8]],
    alphas: Iterable[NDArray[np.uint8]],
    *,
    background: str = "stripes",
) -> int:
    """Write out_dir/com/NNNN.png (composites) and out_dir/pha/NNNN.png (alpha); returns the
    frame count. foregrounds [H,W,3] uint8 RGB, alphas [H,W] uint8, paired frame by frame."""

    def frame(index: int, width: int, height: int) -> NDArray[np.uint8]:
        return moving_background(background, index, width, height)

    return write_composite_clip(out_dir, foregrounds, alphas, frame)


def write_composite_clip(
    out_dir: Path,
    foregrounds: Iterable[NDArray[np.uint8]],
    alphas: Iterable[NDArray[np.uint8]],
    background: Callable[[int, int, int], NDArray[np.uint8]],
) -> int:
    """As `write_eval_clip`, over any moving background: `background(index, width, height)`
    gives frame `index` [H,W,3] uint8 RGB."""
    com, pha = out_dir / "com", out_dir / "pha"
    com.mkdir(parents=True, exist_ok=True)
    pha.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, (fgr, alpha) in enumerate(zip(foregrounds, alphas, strict=True)):
        height, width = alpha.shape
        bg = background(index, width, height)
        image = composite(fgr, alpha, bg)
        cv2.imwrite(str(com / f"{index:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(pha / f"{index:04d}.png"), alpha)
        count += 1
    return count
