"""Evaluation clips with exact ground truth built from a real clip and the FP32 model.

The FP32 model's foreground and alpha of the clip are composited over moving procedural
backgrounds (io.evalclip), giving clips whose alpha is known exactly. Quantized models are
then scored on frames they were not calibrated on (new backgrounds) against exact truth.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.evalclip import BACKGROUNDS, write_eval_clip
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.pipeline import matte_frames

logger = logging.getLogger(__name__)


def build_eval_clips(
    engine: Engine, clip: Path, out_root: Path, *, downsample_ratio: float = 1.0
) -> list[Path]:
    """One clip per background under out_root/<background>/{com,pha}; existing ones are kept."""
    mattes = None
    paths = []
    for background in BACKGROUNDS:
        out = out_root / background
        paths.append(out)
        if (out / "pha").is_dir() and any((out / "pha").iterdir()):
            continue
        if mattes is None:
            mattes = list(matte_frames(engine, iter_frames(clip), downsample_ratio))
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        count = write_eval_clip(
            staging,
            (rgb_to_uint8(m.fgr) for m in mattes),
            (alpha_to_uint8(m.pha) for m in mattes),
            background=background,
        )
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)  # a clip is complete or absent, never half-written
        logger.info("evaluation clip %s: %d frames", out, count)
    return paths
