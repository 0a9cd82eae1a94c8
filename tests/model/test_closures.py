from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptq4vm_core.closure import run_closures
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.model import MattingNetwork, RecurrentState
from ptq4vm_core.model.recipe import conv_names


def test_every_convolution_lies_in_exactly_one_closure() -> None:
    model = MattingNetwork()
    owner: dict[int, list[str]] = {}
    for closure in model.closures():
        for module in closure.modules():
            if isinstance(module, nn.Conv2d):
                owner.setdefault(id(module), []).append(closure.name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(conv_names())
    assert {id(m) for m in convs} == set(owner)
    assert all(len(names) == 1 for names in owner.values()), owner


def test_closures_are_topologically_ordered_and_recurrence_is_self_contained() -> None:
    model = MattingNetwork()
    closures = model.closures()
    available = {"src", "src_sm", "s1", "s2", "s3", "r1", "r2", "r3", "r4"}
    for closure in closures:
        assert set(closure.inputs) <= available, closure.name
        available |= set(closure.outputs)
        for key in closure.recurrent:
            # Only this closure writes its state: no other closure may produce it.
            others = [c.name for c in closures if key in c.outputs and c is not closure]
            assert others == [], (closure.name, key)
    states = [k for c in closures for k in c.recurrent]
    assert sorted(states) == ["r1", "r2", "r3", "r4"]


def test_running_closures_is_the_published_graph(
    rvm: MattingNetwork, weights_file: Path, clip_frames
) -> None:
    """The closures run one by one, their recurrent state carried over two frames, against ONNX
    Runtime on the published graph: a closure skipped, reordered or wired to the wrong input
    changes the matte or the state."""
    ort_engine = OrtEngine(weights_file)
    ort_state = None
    state: RecurrentState | None = None
    for frame in clip_frames[:2]:
        src = frames_to_batch([frame])
        with torch.no_grad():
            env = run_closures(rvm.closures(), rvm.frame_env(torch.from_numpy(src), state, 0.5))
        ours = rvm.frame_output(env)
        theirs = ort_engine.infer(src, ort_state, 0.5)
        np.testing.assert_allclose(ours.pha.numpy(), theirs.pha, rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours.fgr.numpy(), theirs.foreground(), rtol=0, atol=1e-4)
        for key, a, b in zip(ours.state._fields, ours.state, theirs.state, strict=True):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-4, err_msg=key)
        state, ort_state = ours.state, theirs.state
