"""Whether an artifact's int8 convolutions compute exactly on x86 CPUs without VNNI, computed
from its integers (never trusted from its label).

Without VNNI, oneDNN (so OpenVINO) and ONNX Runtime multiply u8 activations by s8 weights with
`vpmaddubsw`, which adds *pairs* of products into int16 with saturation. An activation is at
most 255, so a pair of a dense conv's output channel is at most 255 x (|w_a| + |w_b|), and no
pair of that channel can saturate when its two largest |w| sum to at most 32767 // 255 = 128,
whichever pairs the kernel's layout forms. Depthwise convolutions are computed widened to
16/32 bits by both runtimes and are exact at any weight; a conv whose input stays in float
runs in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ptq4vm_core.artifact.layout import architecture
from ptq4vm_core.artifact.verify import Verified, verify

INT16_MAX = 32767
U8_MAX = 255
# The largest |w_a| + |w_b| of a pair that stays within int16 under any u8 activations.
PAIR_BOUND = INT16_MAX // U8_MAX  # 128


@dataclass(frozen=True)
class SaturationReport:
    """`safe`: every dense int8 conv's pairs stay within int16 under any u8 input. `worst`:
    the dense int8 conv with the largest pair sum and that sum (max over output channels of
    the two largest |w|); `unsafe`: the convs past `PAIR_BOUND`, by name."""

    safe: bool
    worst: tuple[str, int] | None
    unsafe: tuple[str, ...]

    def reason(self) -> str:
        """One line for logs and errors."""
        if self.worst is None:
            return "no dense int8 convolution"
        name, pair = self.worst
        if self.safe:
            return f"every dense int8 conv's weight pairs within +-{PAIR_BOUND} (worst {pair})"
        return (
            f"{len(self.unsafe)} dense int8 conv(s) have weight pairs past {PAIR_BOUND} "
            f"(|w_a| + |w_b| up to {pair} in {name}): 8-bit weights, calibrated for VNNI"
        )


def pair_sums(q: torch.Tensor) -> torch.Tensor:
    """Integer weights [C_out, ...] -> int64 [C_out]: each output channel's two largest |w|
    summed (its single |w| when it has one weight)."""
    flat = q.reshape(q.shape[0], -1).abs().to(torch.int64)
    top = flat.topk(min(2, flat.shape[1]), dim=1).values
    return top.sum(dim=1)


def saturation_report(verified: Verified) -> SaturationReport:
    """Checks a verified artifact's dense int8 convs (dense per the model's architecture,
    int8 where the policy quantizes the input)."""
    manifest = verified.manifest
    convs = architecture(manifest.model).convs
    worst: tuple[str, int] | None = None
    unsafe = []
    for name, q in verified.integers.items():
        layer = manifest.policy.for_layer(name)
        if layer is None or layer.activation is None or not convs[name].dense:
            continue
        pair = int(pair_sums(q).max())
        if worst is None or pair > worst[1]:
            worst = (name, pair)
        if pair > PAIR_BOUND:
            unsafe.append(name)
    return SaturationReport(safe=not unsafe, worst=worst, unsafe=tuple(unsafe))


def check_saturation(path: Path) -> SaturationReport:
    """Verifies the artifact at `path` (hashes, structure, ranges: ArtifactError) and checks
    its integers (`saturation_report`; call that with a `Verified` you already have)."""
    return saturation_report(verify(Path(path)))
