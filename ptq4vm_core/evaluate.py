"""Quality of a model on a clip with ground truth (RVM's evaluation layout: com/ and pha/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ptq4vm_core.engine.base import Engine
from ptq4vm_core.io.compose import to_uint8
from ptq4vm_core.io.metrics import METRIC_NAMES, SequenceMetrics
from ptq4vm_core.io.video import VideoReadError, iter_frames, probe, read_alpha_frames
from ptq4vm_core.pipeline import matte_frames, resolve_downsample_ratio


@dataclass(frozen=True)
class EvalResult:
    """Clip means: MAD and MSE x1e3, Grad and Conn /1e3, dtSSD x1e2 (RVM's scales);
    `mad_vs_fp32` is the MAD (x1e3) between this model's alpha and the FP32 model's."""

    metrics: dict[str, float]
    mad_vs_fp32: float | None
    frames: int
    width: int
    height: int
    downsample_ratio: float


def check_clip_dir(clip: Path) -> tuple[Path, Path]:
    com, pha = clip / "com", clip / "pha"
    for part in (com, pha):
        if not part.is_dir():
            raise VideoReadError(
                f"{clip} is not an evaluation clip: missing {part.name}/ "
                "(expected com/ with input frames and pha/ with ground-truth alpha)"
            )
    return com, pha


def evaluate_clip(
    engine: Engine,
    clip: Path,
    downsample_ratio: float,
    *,
    reference: Engine | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run `engine` (and `reference`, the FP32 model, if given) over clip/com and score the
    alpha against clip/pha."""
    com, pha_dir = check_clip_dir(clip)
    info = probe(com)
    scores = SequenceMetrics(METRIC_NAMES)
    drift = SequenceMetrics(("MAD",))
    truths = read_alpha_frames(pha_dir)
    ref_frames = matte_frames(reference, iter_frames(com), downsample_ratio) if reference else None
    count = 0
    for out in matte_frames(engine, iter_frames(com), downsample_ratio):
        truth = next(truths, None)
        if truth is None:
            raise VideoReadError(f"{pha_dir} has fewer frames than {com} ({count})")
        pred = out.pha[0]
        if truth.shape != pred.shape:
            raise VideoReadError(
                f"alpha frame {count} is {truth.shape[1]}x{truth.shape[0]}, the input "
                f"{pred.shape[1]}x{pred.shape[0]}"
            )
        # Scored on 8-bit alpha, as RVM scores the PNGs a model writes.
        pred8 = to_uint8(pred)
        scores.update(pred8, truth)
        if ref_frames is not None:
            ref = next(ref_frames)
            drift.update(pred8, to_uint8(ref.pha[0]))
        count += 1
        if on_frame is not None:
            on_frame(count)
    if next(truths, None) is not None:
        raise VideoReadError(f"{pha_dir} has more frames than {com} ({count})")
    if count == 0:
        raise VideoReadError(f"{com} has no frames")
    vs_fp32 = drift.result()["MAD"] if ref_frames is not None else None
    return EvalResult(scores.result(), vs_fp32, count, info.width, info.height, downsample_ratio)


def evaluate_clips(
    engine: Engine,
    clips: list[Path],
    *,
    reference: Engine | None = None,
    downsample_ratio: float | None = None,
) -> dict[str, float]:
    """Mean over `clips` of each metric (and `MAD_vs_fp32` when `reference` is given); the
    ratio defaults to RVM's guidance for each clip's size, as `ptq4vm eval` does."""
    if not clips:
        raise ValueError("no evaluation clips given")
    totals: dict[str, float] = {}
    for clip in clips:
        com, _ = check_clip_dir(clip)
        info = probe(com)
        ratio = resolve_downsample_ratio(downsample_ratio, info.width, info.height)
        result = evaluate_clip(engine, clip, ratio, reference=reference)
        values = dict(result.metrics)
        if result.mad_vs_fp32 is not None:
            values["MAD_vs_fp32"] = result.mad_vs_fp32
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value / len(clips)
    return totals
