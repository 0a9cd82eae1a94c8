"""Synthesized moving backgrounds for labelled calibration clips.

A calibration clip with exact ground truth is a matted foreground composited over a new
background (I = a F + (1 - a) B). These backgrounds are the calibration family: procedural
textures, cluttered scenes of moving shapes, out-of-focus lights, each with camera motion
(pan, shake, zoom) and lighting that changes over time (slow gain drift, colour tint, flashes).
They are drawn from their own generators and a seeded random source, and never produce the
evaluation family (`ptq4vm_core.io.evalclip.BACKGROUNDS`, deterministic stripes and blobs):
a model calibrated on these is judged on backgrounds it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.io.evalclip import BACKGROUNDS as EVAL_BACKGROUNDS

CALIBRATION_BACKGROUNDS = ("texture", "clutter", "bokeh")
# Mixed into every seed, so no seed of this family can coincide with another family's stream.
FAMILY_TAG = 0x5EED_CA1B


@dataclass(frozen=True)
class SyntheticBackground:
    """One moving background: `kind` (one of CALIBRATION_BACKGROUNDS) drawn from `seed`.

    `frame(index, width, height)` is frame `index` [H,W,3] uint8 RGB; the same (kind, seed,
    index, size) always gives the same frame."""

    kind: str
    seed: int
    _params: dict[str, NDArray[np.float64]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind in EVAL_BACKGROUNDS:
            raise ValueError(
                f"background {self.kind!r} belongs to the evaluation family; calibration uses "
                f"{', '.join(CALIBRATION_BACKGROUNDS)}"
            )
        if self.kind not in CALIBRATION_BACKGROUNDS:
            raise ValueError(
                f"unknown calibration background {self.kind!r}; choose one of "
                f"{', '.join(CALIBRATION_BACKGROUNDS)}"
            )
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        rng = np.random.default_rng(
            [FAMILY_TAG, CALIBRATION_BACKGROUNDS.index(self.kind), self.seed]
        )
        params = {
            # camera: pan velocity (fraction of the frame per frame), shake, zoom rate
            "pan": rng.uniform(-0.02, 0.02, 2),
            "shake": rng.uniform(0.0, 0.01, 1),
            "zoom": rng.uniform(-0.004, 0.004, 1),
            # lighting: gain drift (period, depth), tint, flash frames
            "light": np.array([rng.uniform(20, 80), rng.uniform(0.1, 0.45), rng.uniform(0, 6.3)]),
            "tint": rng.uniform(-0.12, 0.12, 3),
            "flash": rng.integers(0, 120, 2).astype(np.float64),
            "palette": rng.uniform(0.05, 0.95, (6, 3)),
            "noise": rng.random((4, 4, 3)),
        }
        shapes = 40 if self.kind == "clutter" else 24
        # per shape: x, y (fraction), size, aspect, angle, vx, vy, depth, colour index
        params["shapes"] = np.column_stack(
            [
                rng.uniform(-0.2, 1.2, shapes),
                rng.uniform(-0.2, 1.2, shapes),
                rng.uniform(0.03, 0.25, shapes),
                rng.uniform(0.3, 3.0, shapes),
                rng.uniform(0, 180, shapes),
                rng.uniform(-0.01, 0.01, shapes),
                rng.uniform(-0.006, 0.006, shapes),
                rng.uniform(0.3, 1.5, shapes),
                rng.integers(0, 6, shapes),
            ]
        )
        params["octaves"] = rng.integers(0, 2**31, 5).astype(np.float64)
        object.__setattr__(self, "_params", params)

    def frame(self, index: int, width: int, height: int) -> NDArray[np.uint8]:
        p = self._params
        # Render on a canvas larger than the frame, then move the camera over it.
        size = int(max(width, height) * 1.6)
        if self.kind == "texture":
            canvas = self._texture(size)
        else:
            canvas = self._shapes(size, index, blur=self.kind == "bokeh")
        t = float(index)
        zoom = float(np.exp(p["zoom"][0] * t))
        shake = p["shake"][0] * np.array([np.sin(t * 1.7), np.cos(t * 2.3)])
        cx = size / 2 + (p["pan"][0] * t + shake[0]) * width
        cy = size / 2 + (p["pan"][1] * t + shake[1]) * height
        matrix = np.array(
            [[zoom, 0, width / 2 - zoom * cx], [0, zoom, height / 2 - zoom * cy]], np.float64
        )
        view = cv2.warpAffine(canvas, matrix, (width, height), borderMode=cv2.BORDER_REFLECT101)
        period, depth, phase = p["light"]
        gain = 1.0 + depth * np.sin(2 * np.pi * t / period + phase)
        if np.any(np.abs(index - p["flash"]) < 2):
            gain *= 1.6
        light = gain * (1.0 + p["tint"] * np.sin(t / 37.0))
        lit = np.asarray(view, np.float64) * light * 255.0
        return np.asarray(np.clip(np.rint(lit), 0, 255), np.uint8)

    def _texture(self, size: int) -> NDArray[np.float32]:
        """Fractal value noise (five octaves of upsampled random grids, 4 to 64 cells across),
        stretched to full contrast and coloured by three palette colours."""
        p = self._params
        out = np.zeros((size, size, 3), np.float32)
        for octave, seed in enumerate(p["octaves"]):
            cells = 4 * 2**octave
            grid = np.random.default_rng(int(seed)).random((cells, cells, 3)).astype(np.float32)
            up = np.asarray(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC))
            out += up.astype(np.float32) / np.float32(1.6**octave)
        low, high = out.min(axis=(0, 1)), out.max(axis=(0, 1))
        out = (out - low) / np.maximum(high - low, 1e-6)
        a, b, c = (p["palette"][i].astype(np.float32) for i in range(3))
        lum = out.mean(axis=-1, keepdims=True)
        coloured = a + (b - a) * lum + (c - 0.5) * (out - lum) * 2.0
        return np.asarray(np.clip(coloured, 0, 1), np.float32)

    def _shapes(self, size: int, index: int, *, blur: bool) -> NDArray[np.float32]:
        """Moving rectangles and ellipses over a shaded wall (clutter), or out-of-focus discs
        of light over a dark scene (bokeh); nearer shapes move faster (parallax)."""
        p = self._params
        y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        wall = p["palette"][2] * (0.6 + 0.4 * y) if not blur else p["palette"][2] * 0.25 * (1 - y)
        canvas = np.broadcast_to(wall.astype(np.float32), (size, size, 3)).copy()
        for n, (x0, y0, s, aspect, angle, vx, vy, depth, colour) in enumerate(p["shapes"]):
            cx = int((x0 + vx * depth * index) % 1.4 * size - 0.2 * size)
            cy = int((y0 + vy * depth * index) % 1.4 * size - 0.2 * size)
            axes = (max(1, int(s * size / 2)), max(1, int(s * size / 2 / aspect)))
            rgb = tuple(float(v) for v in p["palette"][int(colour)])
            if blur:
                cv2.circle(canvas, (cx, cy), axes[0], (1.0, 0.95, 0.8) if n % 3 else rgb, -1)
            elif n % 2:
                cv2.ellipse(canvas, (cx, cy), axes, float(angle), 0, 360, rgb, -1)
            else:
                box = cv2.boxPoints(((cx, cy), (2 * axes[0], 2 * axes[1]), float(angle)))
                cv2.fillPoly(canvas, [np.asarray(box, np.intp)], rgb)
        if blur:
            canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=size / 60)
        return canvas


def calibration_backgrounds(count: int, seed: int = 0) -> list[SyntheticBackground]:
    """`count` backgrounds cycling through the calibration kinds, each with its own seed."""
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    kinds = CALIBRATION_BACKGROUNDS
    return [
        SyntheticBackground(kinds[i % len(kinds)], seed * 1000 + i // len(kinds))
        for i in range(count)
    ]
