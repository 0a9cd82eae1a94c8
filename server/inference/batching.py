"""Stacking the recurrent states of several streams into one batch, and splitting them again.

An engine's state is a NamedTuple of per-stream arrays [B,...] (`StateFields`: the engines'
`EngineState` of numpy arrays, or any other such tuple, of numpy arrays or of torch tensors);
its class is the engine's, so stacking and splitting keep it. Frames of different streams can share
one engine call when they have the same model, frame size and downsample ratio and their
states the same structure; `None` (a new stream) only batches with `None`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from ptq4vm_core.engine.base import S, StateArray, StateFields


def state_signature(state: StateFields | None) -> Hashable:
    """Equal for states that `stack_states` can combine; None is its own class."""
    if state is None:
        return None
    return (type(state), tuple((type(f), tuple(f.shape[1:]), str(f.dtype)) for f in state))


def stack_states(states: Sequence[S | None]) -> S | None:
    """B states of batch 1 -> one state of batch B (None when all are None)."""
    present = [s for s in states if s is not None]
    if not present:
        return None
    if len(present) != len(states):
        raise TypeError("a new stream (state None) batches only with other new streams")
    if len(present) == 1:
        return present[0]
    return _rebuild(present[0], [_concatenate(list(col)) for col in zip(*present, strict=True)])


def split_state(state: S, count: int) -> list[S]:
    """One state of batch `count` -> `count` states of batch 1 (copies, not views)."""
    if count == 1:
        return [state]
    return [_rebuild(state, [_row(f, i) for f in state]) for i in range(count)]


def _concatenate(column: list[StateArray]) -> StateArray:
    tensors = [f for f in column if isinstance(f, torch.Tensor)]
    if len(tensors) == len(column):
        return torch.cat(tensors)
    arrays = [f for f in column if isinstance(f, np.ndarray)]
    if len(arrays) == len(column):
        return np.concatenate(arrays)
    raise TypeError("cannot batch a state of torch tensors with one of numpy arrays")


def _row(field: StateArray, i: int) -> StateArray:
    return field[i : i + 1].clone() if isinstance(field, torch.Tensor) else field[i : i + 1].copy()


def _rebuild(like: S, fields: list[StateArray]) -> S:
    # An engine state is a NamedTuple: its class takes the fields as arguments.
    return type(like)(*fields)
