"""Labelled calibration clips synthesized from a real clip and the FP32 model.

PTQ4VM's global stage learns best from ground-truth alpha, and a clip of a person with true
alpha is rare. This makes them from any clip without other people's images: the FP32 model's
foreground and alpha of the clip are composited over synthesized moving backgrounds
(`ptq4vm_core.io.synthbg`: textures, clutter, out-of-focus lights, camera motion, lighting
changes), so the alpha of each composite is known exactly, and the calibration set sees the
subject over many scenes besides its own. The backgrounds are the calibration family, disjoint
from the evaluation clips' (`ptq4vm_core.calib.evalclips`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ptq4vm_core.calib.data import content_hash
from ptq4vm_core.engine.base import Engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.evalclip import write_composite_clip
from ptq4vm_core.io.synthbg import calibration_backgrounds
from ptq4vm_core.io.video import iter_frames
from ptq4vm_core.pipeline import matte_frames

logger = logging.getLogger(__name__)


def build_synthetic_clips(
    engine: Engine,
    clip: Path,
    out_root: Path,
    count: int,
    *,
    seed: int = 0,
    downsample_ratio: float = 1.0,
) -> list[Path]:
    """`count` labelled clips out_root/<clip hash>-<kind>-<seed>/{com,pha}, the clip's
    foreground and alpha (by `engine`, the FP32 model) over `calibration_backgrounds(count,
    seed)`; clips already there are kept. Returns their directories, for
    `build_calibration_set`."""
    backgrounds = calibration_backgrounds(count, seed)
    tag = content_hash(clip)[:16]
    mattes = None
    paths = []
    for background in backgrounds:
        out = out_root / f"{tag}-{background.kind}-{background.seed}"
        paths.append(out)
        if (out / "pha").is_dir() and any((out / "pha").iterdir()):
            continue
        if mattes is None:
            mattes = list(matte_frames(engine, iter_frames(clip), downsample_ratio))
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        frames = write_composite_clip(
            staging,
            (rgb_to_uint8(m.fgr) for m in mattes),
            (alpha_to_uint8(m.pha) for m in mattes),
            background.frame,
        )
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)  # a clip is complete or absent, never half-written
        logger.info("synthetic calibration clip %s: %d frames", out, frames)
    return paths
