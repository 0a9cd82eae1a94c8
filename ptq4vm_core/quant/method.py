"""The names of the post-training quantization methods and calibration profiles.

This is the vocabulary an artifact's manifest records (`method`, `profile`); what each method
does, and what each profile costs, is in `ptq4vm_core.calib` (`calib.methods`), which builds on
these names. They live here, below both, so that the artifact format never imports calibration.
"""

from __future__ import annotations

from enum import StrEnum


class Method(StrEnum):
    MINMAX = "minmax"  # ranges from min/max, round to nearest, no optimisation
    BRECQ = "brecq"  # block reconstruction: AdaRound + activation step sizes
    QDROP = "qdrop"  # BRECQ with activation quantization randomly dropped (p = 0.5)
    PTQ4VM = "ptq4vm"  # BIQ (QDrop-style by default) + GAC + OFA


class Profile(StrEnum):
    FAST = "fast"  # tests and smoke runs
    STANDARD = "standard"  # CPU default
    PAPER = "paper"  # the paper's 20k iterations per block, for a GPU
