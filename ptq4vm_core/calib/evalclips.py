"""Evaluation clips with exact ground truth built from a real clip and the FP32 model.

The FP32 model's foreground and alpha of the clip are composited over moving procedural
backgrounds (io.evalclip), giving clips whose alpha is known exactly. Quantized models are
then scored on frames they were not calibrated on (new backgrounds) against exact truth.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.evalclip import BACKGROUNDS, moving_background, write_composite_clip
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.pipeline import matte_frames

logger = logging.getLogger(__name__)


Background = Callable[[int, int, int], NDArray[np.uint8]]
"""Frame `index` of a moving background: (index, width, height) -> [H,W,3] uint8 RGB."""


def build_eval_clips(
    engine: Engine,
    clip: Path,
    out_root: Path,
    *,
    downsample_ratio: float = 1.0,
    size: tuple[int, int] | None = None,
) -> list[Path]:
    """One clip per background under out_root/<background>/{com,pha}; existing ones are kept.
    `size` (W, H): the foreground and alpha resized to it before compositing (the clip's own
    size otherwise), so the resized alpha is the composites' exact truth."""
    targets = {out_root / b: partial(moving_background, b) for b in BACKGROUNDS}
    return composite_clips(
        engine, clip, targets, downsample_ratio, what="evaluation clip", size=size
    )


def composite_clips(
    engine: Engine,
    clip: Path,
    targets: Mapping[Path, Background],
    downsample_ratio: float = 1.0,
    *,
    what: str = "clip",
    size: tuple[int, int] | None = None,
) -> list[Path]:
    """The clip's foreground and alpha (by `engine`) over each target's background, written to
    <target>/{com,pha}; a target already written is kept, the clip is matted once for all the
    others. Each is written aside and renamed into place: complete or absent, never half."""
    mattes = None
    for out, background in targets.items():
        if (out / "pha").is_dir() and any((out / "pha").iterdir()):
            continue
        if mattes is None:
            mattes = list(matte_frames(engine, iter_frames(clip), downsample_ratio))
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        count = write_composite_clip(
            staging,
            (_resized(rgb_to_uint8(m.fgr), size) for m in mattes),
            (_resized(alpha_to_uint8(m.pha), size) for m in mattes),
            background,
        )
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        logger.info("%s %s: %d frames", what, out, count)
    return list(targets)


def _resized(image: NDArray[np.uint8], size: tuple[int, int] | None) -> NDArray[np.uint8]:
    if size is None:
        return image
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), np.uint8)
