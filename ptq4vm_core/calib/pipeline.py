"""The one way clips become an artifact: clips -> (held-out split) -> calibration set -> method
-> artifact, with progress events, and the quality gate beside it. `ptq4vm calibrate` and the
server's calibration child (`server.calibration.worker`) both call `run_calibration` with a
`CalibrationRequest`, so an option means the same in both, and the same clips, options and
seed give the same artifact from either.

With `holdout`, the last fraction of each clip's frames is held out of calibration (written as
frames under `work`, fitted to `HELD_OUT_MAX_SIDE`) for `run_gate`: the candidate's drift from
FP32 on frames it never saw, against the active version's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import torch

from ptq4vm_core.artifact import load_artifact, save_artifact, update_metrics
from ptq4vm_core.assets import sample_clip_path, weights_path
from ptq4vm_core.calib.calibrate import CalibrationResult, calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.gate import GateReport, GateThresholds, judge, mad_vs_reference
from ptq4vm_core.calib.methods import PROFILES, Base, Method, Profile, Ptq4vmOptions
from ptq4vm_core.calib.progress import ProgressCallback, ProgressEvent, log_progress
from ptq4vm_core.calib.synthetic import build_synthetic_clips
from ptq4vm_core.engine import FP32, load_engine
from ptq4vm_core.engine.runtime import default_threads
from ptq4vm_core.io.video import iter_frames, read_alpha_frames
from ptq4vm_core.model import load_rvm_from_onnx
from ptq4vm_core.model.recipe import CHEAP_INPUTS, SENSITIVE_INPUTS, rvm_policy
from ptq4vm_core.paths import cache_root
from ptq4vm_core.quant.spec import Bits, Int8Target

MAX_FRAMES_PER_CLIP = 1000  # as the calibration set's loader: bounds the work per clip
MAX_HELD_OUT_FRAMES = 60  # per clip: enough for a drift estimate, quick to run
HELD_OUT_MAX_SIDE = 512  # held-out frames are fitted to this, the resolution of service
# Named sets of float inputs (`--float-inputs sensitive`, docs/quantization.md).
FLOAT_INPUT_PRESETS: dict[str, tuple[str, ...]] = {
    "sensitive": SENSITIVE_INPUTS,
    "cheap": CHEAP_INPUTS,
}


def float_inputs_named(spec: str) -> tuple[str, ...]:
    """`--float-inputs`/`float_inputs`: comma-separated layer names, or one preset name."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if len(names) == 1 and names[0] in FLOAT_INPUT_PRESETS:
        return FLOAT_INPUT_PRESETS[names[0]]
    return names


@dataclass(frozen=True)
class ClipSource:
    """A calibration clip: a video, a frame directory or one with com/ (and pha/); `alpha`, a
    ground-truth alpha video for a video clip."""

    video: Path
    alpha: Path | None = None


@dataclass(frozen=True)
class CalibrationRequest:
    """Everything that decides the artifact; checked by `check` before any work."""

    clips: tuple[ClipSource, ...]
    bits: Bits
    method: Method
    profile: Profile = Profile.STANDARD
    seed: int = 0
    int8_target: Int8Target = Int8Target.VNNI
    device: str = "cpu"
    float_inputs: tuple[str, ...] = ()
    # PTQ4VM only: its BIQ stage, its global stage's switches, and a finished BIQ to start from.
    base: Base = Base.QDROP
    gac: bool = True
    ofa: bool = True
    biq_from: Path | None = None
    synthetic_backgrounds: int = 0
    holdout: float | None = None  # the fraction of each clip held out for the quality gate

    def ptq4vm(self) -> Ptq4vmOptions | None:
        if self.method is not Method.PTQ4VM:
            return None
        return Ptq4vmOptions(base=self.base, gac=self.gac, ofa=self.ofa)

    def check(self) -> None:
        """ValueError for a request that cannot run, naming the option."""
        if not self.clips:
            raise ValueError("no clips to calibrate on")
        self.check_options()

    def check_options(self) -> None:
        """`check` but for the clips (a server checks the options before storing uploads)."""
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda asked for, but no CUDA device is available")
        switched = not self.gac or not self.ofa or self.base is not Base.QDROP
        if self.method is not Method.PTQ4VM and (switched or self.biq_from is not None):
            raise ValueError(
                "--no-gac, --no-ofa, --base and --biq-from apply to --method ptq4vm only"
            )
        if self.holdout is not None and not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.synthetic_backgrounds < 0:
            raise ValueError("synthetic_backgrounds must be >= 0")
        rvm_policy(self.bits, float_inputs=self.float_inputs, target=self.int8_target)


@dataclass
class CalibrationRun:
    """What `run_calibration` made: the artifact, the method's result, the held-out frames."""

    artifact: Path
    result: CalibrationResult
    held_out: list[Path] = field(default_factory=list)


def run_calibration(
    request: CalibrationRequest,
    out: Path,
    *,
    work: Path,
    home: Path | None = None,
    progress: ProgressCallback | None = None,
) -> CalibrationRun:
    """Calibrates `request` and saves the artifact at `out` (atomically, `save_artifact`).
    `work`: scratch for the held-out split; `home`: the cache root (weights, sample clip).
    Events: a `prepare` stage per clip, then the method's own (`calib.progress`).

    Torch runs on `default_threads()` (PTQ4VM_THREADS, which the server sets for its child):
    float sums depend on how the work is split, so the same threads give the same integers."""
    request.check()
    torch.set_num_threads(default_threads())
    report: ProgressCallback = progress or log_progress
    prof = PROFILES[request.profile]
    policy = rvm_policy(request.bits, float_inputs=request.float_inputs, target=request.int8_target)
    biq = None if request.biq_from is None else load_artifact(request.biq_from)
    if biq is not None and biq.manifest.method != request.base.value:
        raise ValueError(
            f"--biq-from {request.biq_from} was calibrated with {biq.manifest.method}, but "
            f"PTQ4VM's BIQ stage here is {request.base.value} (--base)"
        )
    clips: list[Path] = []
    held_out: list[Path] = []
    for index, clip in enumerate(request.clips):
        report(_prepare_event(index, len(request.clips)))
        if request.holdout is None:
            clips.append(clip.video)
            continue
        calib, held = split_clip(clip, index, work, holdout=request.holdout, max_side=prof.max_side)
        clips.append(calib)
        held_out.append(held)
    if request.synthetic_backgrounds:
        root = home or cache_root()
        clips += build_synthetic_clips(
            load_engine(FP32, root=root), sample_clip_path(root), root / "cache" / "synthetic",
            request.synthetic_backgrounds, seed=request.seed,
        )  # fmt: skip
    data = build_calibration_set(
        clips, frames=prof.frames, seq_len=prof.seq_len, max_side=prof.max_side,
        seed=request.seed,
    )  # fmt: skip
    result = calibrate(
        load_rvm_from_onnx(weights_path(home)), data, bits=request.bits, method=request.method,
        profile=request.profile, device=request.device, progress=report, seed=request.seed,
        ptq4vm=request.ptq4vm(), policy=policy, biq_model=None if biq is None else biq.model,
        target=request.int8_target,
    )  # fmt: skip
    return CalibrationRun(save_artifact(result, data, out), result, held_out)


def _prepare_event(index: int, total: int) -> ProgressEvent:
    return ProgressEvent(
        stage="prepare", unit=f"clip{index}", step=index, total=total, done=0.0, overall=1.0
    )


def run_gate(
    artifact: Path,
    held_out: list[Path],
    thresholds: GateThresholds,
    *,
    active: str = FP32,
    active_version: str = FP32,
    home: Path | None = None,
) -> GateReport:
    """The candidate at `artifact` and the `active` model (a name or an artifact directory,
    shown as `active_version`), each against FP32 on `held_out`; the verdict goes into the
    artifact's metrics too."""
    fp32 = load_engine(FP32, root=home)
    candidate = load_engine(str(artifact), root=home)
    candidate_mad, frames = mad_vs_reference(candidate, fp32, held_out)
    del candidate
    active_mad = 0.0
    if active_version != FP32:
        active_mad, _ = mad_vs_reference(load_engine(active, root=home), fp32, held_out)
    verdict = judge(candidate_mad, active_version, active_mad, frames, thresholds)
    update_metrics(
        artifact,
        {"MAD_vs_fp32_held_out": candidate_mad, "held_out_frames": frames,
         "gate": verdict.to_dict()},
    )  # fmt: skip
    return verdict


def _fit(frame: Any, max_side: int) -> Any:
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def split_clip(
    clip: ClipSource, index: int, work: Path, *, holdout: float, max_side: int
) -> tuple[Path, Path]:
    """Splits one clip into PNG frame directories: (calibration clip, held-out frames).

    The calibration clip is an evaluation-style directory (`com/`, and `pha/` when the clip
    has ground truth) with the first frames, fitted to the profile's `max_side` as the
    calibration set would fit them; the held-out directory has the last `holdout` of them."""
    count = sum(
        1 for _, _ in zip(range(MAX_FRAMES_PER_CLIP), iter_frames(clip.video), strict=False)
    )
    held = max(1, math.floor(count * holdout))
    split = count - held
    if split < 1:
        raise ValueError(f"clip {index + 1} has {count} frame(s): too few to hold any out")
    calib, held_dir = work / f"clip{index}", work / f"held{index}"
    (calib / "com").mkdir(parents=True)
    held_dir.mkdir(parents=True)
    alphas = read_alpha_frames(clip.alpha) if clip.alpha is not None else None
    if alphas is not None:
        (calib / "pha").mkdir()
    first_held = count - min(held, MAX_HELD_OUT_FRAMES)
    for i, frame in zip(range(count), iter_frames(clip.video), strict=False):
        alpha = next(alphas, None) if alphas is not None and i < split else None
        if i < split:
            cv2.imwrite(str(calib / "com" / f"{i:05d}.png"), _fit(frame, max_side)[..., ::-1])
            if alphas is not None:
                if alpha is None:
                    raise ValueError(f"the alpha of clip {index + 1} has fewer frames than it")
                cv2.imwrite(str(calib / "pha" / f"{i:05d}.png"), _fit(alpha, max_side))
        elif i >= first_held:
            fitted = _fit(frame, HELD_OUT_MAX_SIDE)
            cv2.imwrite(str(held_dir / f"{i:05d}.png"), fitted[..., ::-1])
    return calib, held_dir
