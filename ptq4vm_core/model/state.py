"""The recurrent state that one video stream carries from frame to frame."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class RecurrentState(NamedTuple):
    """Hidden states of RVM's four ConvGRUs, finest (r1) to coarsest (r4).

    Shapes for a [B,3,H,W] input at downsample ratio d, with h = ceil(H*d / 2**k) for stage k:
    r1 [B,16,h/2,w/2], r2 [B,20,h/4,w/4], r3 [B,40,h/8,w/8], r4 [B,64,h/16,w/16]; float,
    values in [-1, 1] (a GRU state is a convex mix of tanh outputs). ``None`` in place of a
    state means a new stream: every GRU then starts from zeros.

    The value is immutable: a model call returns a new state and never modifies its input, so
    a stream can be rewound, forked or compared frame by frame.
    """

    r1: Tensor
    r2: Tensor
    r3: Tensor
    r4: Tensor

    def detach(self) -> RecurrentState:
        """The same state cut from the autograd graph (for truncated back-propagation)."""
        return RecurrentState(*(r.detach() for r in self))
