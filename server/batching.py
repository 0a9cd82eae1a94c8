"""Stacking the recurrent states of several streams into one batch, and splitting them again.

Engines return a state as a NamedTuple of per-stream tensors [B,...] (numpy arrays for ONNX
Runtime, torch tensors for PyTorch). Frames of different streams can share one engine call
when they have the same model, frame size and downsample ratio and their states the same
structure; `None` (a new stream) only batches with `None`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _fields(state: Any) -> tuple[Any, ...] | None:
    if (
        isinstance(state, tuple)
        and state
        and all(isinstance(f, np.ndarray | torch.Tensor) for f in state)
    ):
        return state
    return None


def state_signature(state: Any) -> Any:
    """Equal for states that `stack_states` can combine; None is its own class."""
    if state is None:
        return None
    fields = _fields(state)
    if fields is None:
        # An engine whose state is no tuple of tensors: never batched with another stream.
        return ("unbatchable", id(state))
    return (type(state), tuple((type(f), tuple(f.shape[1:]), str(f.dtype)) for f in fields))


def stack_states(states: Sequence[Any]) -> Any:
    """B states of batch 1 -> one state of batch B (None when all are None)."""
    if all(s is None for s in states):
        return None
    if len(states) == 1:
        return states[0]
    first = states[0]
    columns = zip(*(_checked(s) for s in states), strict=True)
    stacked = [
        torch.cat(list(col)) if isinstance(col[0], torch.Tensor) else np.concatenate(col)
        for col in columns
    ]
    return _rebuild(first, stacked)


def split_state(state: Any, count: int) -> list[Any]:
    """One state of batch `count` -> `count` states of batch 1 (copies, not views)."""
    if count == 1 or state is None:
        return [state] * count
    fields = _checked(state)
    return [_rebuild(state, [_row(f, i) for f in fields]) for i in range(count)]


def _row(field: Any, i: int) -> Any:
    return field[i : i + 1].clone() if isinstance(field, torch.Tensor) else field[i : i + 1].copy()


def _rebuild(like: Any, fields: list[Any]) -> Any:
    # NamedTuples take fields as arguments, plain tuples as one iterable.
    return type(like)(*fields) if hasattr(like, "_fields") else type(like)(fields)


def _checked(state: Any) -> tuple[Any, ...]:
    fields = _fields(state)
    if fields is None:
        raise TypeError(f"cannot batch a recurrent state of type {type(state).__name__}")
    return fields
