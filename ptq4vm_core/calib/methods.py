"""Calibration methods and profiles, as data.

`Method` and `Profile` are named in `ptq4vm_core.quant.method` (the artifact records them
and must not import calibration); they are re-exported here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from ptq4vm_core.quant.method import Method, Profile

__all__ = [
    "PROFILES",
    "Base",
    "Method",
    "Profile",
    "ProfileConfig",
    "ReconstructionConfig",
]


class Base(StrEnum):
    """The BIQ stage of PTQ4VM."""

    BRECQ = "brecq"
    QDROP = "qdrop"


@dataclass(frozen=True)
class ProfileConfig:
    """frames: calibration frames (sequences x seq_len); iters: optimisation steps per closure;
    batch: sequences per step; max_side: long side the calibration frames are fitted to;
    gac_iters: steps of PTQ4VM's global stage, each on gac_window consecutive frames."""

    frames: int
    seq_len: int
    iters: int
    batch: int
    max_side: int
    gac_iters: int
    gac_window: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[Profile, ProfileConfig] = {
    Profile.FAST: ProfileConfig(16, 4, iters=20, batch=1, max_side=128, gac_iters=10, gac_window=3),
    Profile.STANDARD: ProfileConfig(
        256, 8, iters=160, batch=1, max_side=176, gac_iters=40, gac_window=4
    ),
    Profile.PAPER: ProfileConfig(
        256, 8, iters=20000, batch=4, max_side=512, gac_iters=2000, gac_window=8
    ),
}


@dataclass(frozen=True)
class ReconstructionConfig:
    """BIQ hyper-parameters (BRECQ/QDrop defaults): Adam on AdaRound's alpha (lr_round) and on
    activation step sizes (lr_act, cosine-annealed); AdaRound regulariser weight and schedule;
    drop_prob = 0.5 for QDrop, 0 for BRECQ."""

    iters: int
    batch: int
    lr_round: float = 1e-3
    lr_act: float = 4e-5
    round_weight: float = 0.01
    warmup: float = 0.2
    drop_prob: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
