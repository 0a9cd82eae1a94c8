"""Calibration methods and profiles, as data.

`Method` and `Profile` are named in `ptq4vm_core.quant.method` (the artifact records them
and must not import calibration); they are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from ptq4vm_core.quant.method import Method, Profile

__all__ = [
    "OFA_WEIGHT",
    "PROFILES",
    "QDROP_PROB",
    "Base",
    "Method",
    "Profile",
    "ProfileConfig",
    "Ptq4vmOptions",
    "ReconstructionConfig",
    "Strategy",
    "strategy",
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


QDROP_PROB = 0.5
OFA_WEIGHT = 0.02  # lambda: the L1 prior next to the alpha MSE


@dataclass(frozen=True)
class Ptq4vmOptions:
    """PTQ4VM's switches: `base` is the BIQ stage; `gac` learns gamma and beta in the global
    stage; `ofa` adds the optical-flow prior (weight `ofa_weight`) to it, over the pixels with
    reliable flow only when `mask_occlusions`. With gac and ofa both off, PTQ4VM is its base."""

    base: Base = Base.QDROP
    gac: bool = True
    ofa: bool = True
    ofa_weight: float = OFA_WEIGHT
    mask_occlusions: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Base(self.base))
        if self.ofa_weight < 0 or not math.isfinite(self.ofa_weight):
            raise ValueError(f"ofa_weight={self.ofa_weight} must be a finite number >= 0")

    @property
    def global_stage(self) -> bool:
        return self.gac or self.ofa

    def label(self) -> str:
        """e.g. "qdrop+gac+ofa"."""
        parts = [self.base.value] + ["gac"] * self.gac + ["ofa"] * self.ofa
        return "+".join(parts) + ("" if self.mask_occlusions or not self.ofa else "(nomask)")

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.value, "gac": self.gac, "ofa": self.ofa,
                "ofa_weight": self.ofa_weight, "mask_occlusions": self.mask_occlusions}  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    """What a method does over the model's closures, as data: how the weight and activation
    ranges start (`range_search`: the Lp search, else plain min/max), whether BIQ then learns
    rounding and step sizes closure by closure (`drop_prob`: QDrop's; None: no learning, as
    MinMax), and the global stage that follows (`global_stage`: PTQ4VM's GAC/OFA switches)."""

    method: Method
    range_search: bool
    drop_prob: float | None
    global_stage: Ptq4vmOptions | None = None

    @property
    def range_grid(self) -> int:
        """Clipping ratios the range search tries (1: min/max itself)."""
        return 100 if self.range_search else 1

    def reconstruction(self, profile: ProfileConfig, seed: int) -> ReconstructionConfig | None:
        if self.drop_prob is None:
            return None
        return ReconstructionConfig(
            iters=profile.iters, batch=profile.batch, drop_prob=self.drop_prob, seed=seed
        )

    @property
    def has_global_stage(self) -> bool:
        return self.global_stage is not None and self.global_stage.global_stage


def strategy(method: Method, ptq4vm: Ptq4vmOptions | None = None) -> Strategy:
    """The strategy of `method`; `ptq4vm` (PTQ4VM's switches, default all on) only with it."""
    method = Method(method)
    if method is not Method.PTQ4VM and ptq4vm is not None:
        raise ValueError(f"PTQ4VM options apply to method ptq4vm, not {method}")
    if method is Method.MINMAX:
        return Strategy(method, range_search=False, drop_prob=None)
    if method is Method.BRECQ:
        return Strategy(method, range_search=True, drop_prob=0.0)
    if method is Method.QDROP:
        return Strategy(method, range_search=True, drop_prob=QDROP_PROB)
    opts = ptq4vm or Ptq4vmOptions()
    drop = QDROP_PROB if opts.base is Base.QDROP else 0.0
    return Strategy(method, range_search=True, drop_prob=drop, global_stage=opts)
