from __future__ import annotations

import torch
from torch import nn

from ptq4vm_core.closure import run_closures
from ptq4vm_core.model import MattingNetwork


def test_every_convolution_lies_in_exactly_one_closure() -> None:
    model = MattingNetwork()
    owner: dict[int, list[str]] = {}
    for closure in model.closures():
        for module in closure.modules():
            if isinstance(module, nn.Conv2d):
                owner.setdefault(id(module), []).append(closure.name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 82
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


def test_running_closures_is_the_forward_pass(rvm: MattingNetwork, clip_frames) -> None:
    x = torch.from_numpy(clip_frames[0]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        env = run_closures(rvm.closures(), rvm.frame_env(x, None, 0.5))
        out = rvm(x, None, 0.5)
    torch.testing.assert_close(env["pha"], out.pha, rtol=0, atol=0)
    assert env["r1"] is not None
    torch.testing.assert_close(env["r1"], out.state.r1, rtol=0, atol=0)
