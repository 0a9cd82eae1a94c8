"""Per-closure tensors over the whole calibration set, for the FP and the quantized branch.

Every environment key holds a tensor [N,T,...] (sequence, frame, then the frame's shape). A
closure is run over all N x T frames in sequence order, its recurrent keys carried from one
frame to the next, so its own previous output is always its recurrent input.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ptq4vm_core.closure import Closure

SeqEnv = dict[str, Tensor]


def frame_inputs(
    closure: Closure, env: SeqEnv, idx: Tensor | slice, t: int, state: dict[str, Tensor | None]
) -> dict[str, Tensor | None]:
    """The inputs of `closure` for frame t of sequences idx: recurrent keys from `state`."""
    return {
        key: state.get(key) if key in closure.recurrent else env[key][idx, t]
        for key in closure.inputs
    }


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def run_over_set(closure: Closure, env: SeqEnv, *, chunk: int = 8) -> SeqEnv:
    """Outputs of `closure` [N,T,...] for every frame, recurrent state carried along T."""
    n, t_len = next(iter(env.values())).shape[:2]
    collected: dict[str, list[Tensor]] = {key: [] for key in closure.outputs}
    for part in chunks(n, chunk):
        state: dict[str, Tensor | None] = {}
        frames: dict[str, list[Tensor]] = {key: [] for key in closure.outputs}
        for t in range(t_len):
            out = closure.run(frame_inputs(closure, env, part, t, state))
            for key, value in out.items():
                frames[key].append(value)
            state = {key: out[key] for key in closure.recurrent}
        for key in closure.outputs:
            collected[key].append(torch.stack(frames[key], dim=1))
    return {key: torch.cat(parts, dim=0) for key, parts in collected.items()}


def needed_after(closures: list[Closure], index: int, keep: tuple[str, ...]) -> set[str]:
    """Keys that closures after `index` still read, plus `keep`."""
    needed = set(keep)
    for closure in closures[index + 1 :]:
        needed |= set(closure.inputs) - set(closure.recurrent)
    return needed
