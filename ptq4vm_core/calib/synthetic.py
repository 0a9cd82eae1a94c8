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

from pathlib import Path

from ptq4vm_core.calib.data import content_hash
from ptq4vm_core.calib.evalclips import composite_clips
from ptq4vm_core.engine.base import Engine
from ptq4vm_core.io.synthbg import calibration_backgrounds


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
    tag = content_hash(clip)[:16]
    targets = {
        out_root / f"{tag}-{b.kind}-{b.seed}": b.frame for b in calibration_backgrounds(count, seed)
    }
    return composite_clips(
        engine, clip, targets, downsample_ratio, what="synthetic calibration clip"
    )
