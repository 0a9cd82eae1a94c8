"""Calibration data: consecutive-frame sequences from one or more clips, state carried.

PTQ4VM calibrates on 256 frames. A short clip (the 120-frame sample) is stretched to that by
augmentation applied per sequence — scale, crop, horizontal flip — so every sequence stays a
real piece of video with real motion, just seen through a different window.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from ptq4vm_core.assets import sha256_file
from ptq4vm_core.io.video import VideoReadError, iter_frames, read_alpha_frames

logger = logging.getLogger(__name__)

MAX_FRAMES_PER_CLIP = 1000  # bounds memory for long uploads; sequences are drawn from these


@dataclass(frozen=True)
class ClipSource:
    """A calibration clip: frames (video or frame directory) and, optionally, ground truth."""

    frames: Path
    alpha: Path | None
    sha256: str

    @classmethod
    def discover(cls, path: Path) -> ClipSource:
        """A video, a frame directory, or an evaluation-style directory with com/ (and pha/)."""
        if not path.exists():
            raise VideoReadError(f"calibration clip not found: {path}")
        frames, alpha = path, None
        if path.is_dir() and (path / "com").is_dir():
            frames = path / "com"
            alpha = path / "pha" if (path / "pha").is_dir() else None
        return cls(frames, alpha, content_hash(path))


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CalibrationSet:
    """frames [N,T,3,H,W] float in [0,1]; alphas [N,T,1,H,W] float in [0,1] for the sequences
    whose clip has ground truth (has_alpha [N] bool says which; zeros elsewhere)."""

    frames: Tensor
    alphas: Tensor
    has_alpha: Tensor
    sources: tuple[ClipSource, ...]
    seed: int

    @property
    def num_sequences(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.frames.shape[1])

    def provenance(self) -> dict[str, object]:
        return {
            "clips": [
                {"path": str(s.frames), "sha256": s.sha256, "ground_truth": s.alpha is not None}
                for s in self.sources
            ],
            "sequences": self.num_sequences,
            "seq_len": self.seq_len,
            "size": [int(self.frames.shape[-1]), int(self.frames.shape[-2])],
            "seed": self.seed,
        }


def _fit(frame: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return frame
    size = (round(width * scale), round(height * scale))
    return np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), np.uint8)


def _load(source: ClipSource, max_side: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8] | None]:
    frames = [
        _fit(f, max_side)
        for _, f in zip(range(MAX_FRAMES_PER_CLIP), iter_frames(source.frames), strict=False)
    ]
    if not frames:
        raise VideoReadError(f"calibration clip {source.frames} has no frames")
    alphas = None
    if source.alpha is not None:
        alphas_list = [
            _fit(a, max_side)
            for _, a in zip(range(len(frames)), read_alpha_frames(source.alpha), strict=False)
        ]
        if len(alphas_list) != len(frames):
            raise VideoReadError(
                f"{source.alpha} has {len(alphas_list)} alpha frames for {len(frames)} frames"
            )
        alphas = np.stack(alphas_list)
    return np.stack(frames), alphas


def _window(
    video: NDArray[np.uint8], rng: np.random.Generator, size: tuple[int, int], augment: bool
) -> tuple[float, int, int, bool]:
    """Augmentation for one sequence: (scale, top, left, flip), the same for all its frames."""
    height, width = video.shape[1:3]
    base = max(size[0] / height, size[1] / width)
    scale = base * (rng.uniform(1.0, 1.3) if augment else 1.0)
    out_h, out_w = math.ceil(height * scale), math.ceil(width * scale)
    top = int(rng.integers(0, out_h - size[0] + 1)) if augment else (out_h - size[0]) // 2
    left = int(rng.integers(0, out_w - size[1] + 1)) if augment else (out_w - size[1]) // 2
    return scale, top, left, bool(augment and rng.random() < 0.5)


def _apply(
    frames: NDArray[np.uint8], window: tuple[float, int, int, bool], size: tuple[int, int]
) -> NDArray[np.uint8]:
    scale, top, left, flip = window
    height, width = frames.shape[1:3]
    out = []
    for frame in frames:
        if scale != 1.0:
            dsize = (math.ceil(width * scale), math.ceil(height * scale))
            frame = np.asarray(cv2.resize(frame, dsize, interpolation=cv2.INTER_LINEAR), np.uint8)
        frame = frame[top : top + size[0], left : left + size[1]]
        out.append(frame[:, ::-1] if flip else frame)
    return np.stack(out)


def build_calibration_set(
    clips: list[Path],
    *,
    frames: int = 256,
    seq_len: int = 8,
    max_side: int = 512,
    seed: int = 0,
) -> CalibrationSet:
    """Draw ceil(frames / seq_len) sequences of `seq_len` consecutive frames from `clips`.

    Frames are fitted to `max_side` px (the resolution the network sees in service) and all
    sequences are cropped to one size: the smallest clip's, rounded down to a multiple of 16.
    The first pass over each clip takes plain, centred windows; later ones are augmented.
    """
    if not clips:
        raise ValueError("no calibration clips given")
    if seq_len < 1 or frames < seq_len:
        raise ValueError(f"need frames >= seq_len >= 1, got frames={frames}, seq_len={seq_len}")
    sources = tuple(ClipSource.discover(Path(c)) for c in clips)
    loaded = [_load(s, max_side) for s in sources]
    for source, (video, _) in zip(sources, loaded, strict=True):
        if len(video) < seq_len:
            raise ValueError(
                f"{source.frames} has {len(video)} frames, fewer than seq_len={seq_len}"
            )
    height = min(v.shape[1] for v, _ in loaded) // 16 * 16
    width = min(v.shape[2] for v, _ in loaded) // 16 * 16
    if height < 32 or width < 32:
        raise ValueError(f"calibration clips must be at least 32x32 px, got {width}x{height}")
    size = (height, width)

    rng = np.random.default_rng(seed)
    count = math.ceil(frames / seq_len)
    seqs, alphas, has_alpha = [], [], []
    plain = {i: list(range(0, len(v) - seq_len + 1, seq_len)) for i, (v, _) in enumerate(loaded)}
    for n in range(count):
        index = n % len(loaded)
        video, alpha = loaded[index]
        augment = not plain[index]
        start = (
            plain[index].pop(0) if not augment else int(rng.integers(0, len(video) - seq_len + 1))
        )
        window = _window(video, rng, size, augment)
        seqs.append(_apply(video[start : start + seq_len], window, size))
        if alpha is not None:
            alphas.append(_apply(alpha[start : start + seq_len], window, size))
            has_alpha.append(True)
        else:
            alphas.append(np.zeros((seq_len, *size), np.uint8))
            has_alpha.append(False)
    frames_t = torch.from_numpy(np.stack(seqs)).permute(0, 1, 4, 2, 3).float().div_(255.0)
    alphas_t = torch.from_numpy(np.stack(alphas)).unsqueeze(2).float().div_(255.0)
    logger.info(
        "calibration set: %d sequences x %d frames at %dx%d from %d clip(s)",
        count, seq_len, width, height, len(sources),
    )  # fmt: skip
    return CalibrationSet(
        frames_t.contiguous(), alphas_t.contiguous(), torch.tensor(has_alpha), sources, seed
    )
