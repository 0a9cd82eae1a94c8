from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from ptq4vm_core.model import MattingNetwork, RecurrentState, load_rvm_from_onnx
from ptq4vm_core.model.matting import convs_in_graph_order
from ptq4vm_core.model.recipe import conv_names
from ptq4vm_core.model.weights import WeightsError, read_onnx_convs


def _frames(clip_frames, n: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    x = torch.from_numpy(np.stack(clip_frames[:n])).permute(0, 3, 1, 2).float() / 255
    if size is not None:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def test_every_onnx_convolution_maps_to_one_module(weights_file: Path) -> None:
    convs = read_onnx_convs(weights_file)
    modules = [m for m in MattingNetwork().modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(modules) == len(conv_names())
    total = sum(c.weight.size + (c.bias.size if c.bias is not None else 0) for c in convs)
    assert total == sum(p.numel() for p in MattingNetwork().parameters())


def test_weights_are_copied_exactly(rvm: MattingNetwork, weights_file: Path) -> None:
    convs = read_onnx_convs(weights_file)
    modules = [m for m in rvm.modules() if isinstance(m, nn.Conv2d)]
    for conv, src in zip(modules, convs, strict=True):
        np.testing.assert_array_equal(conv.weight.numpy(), src.weight)
    assert not any(p.requires_grad for p in rvm.parameters())


def test_conv_order_is_the_graph_order(
    rvm: MattingNetwork, weights_file: Path, clip_frames
) -> None:
    """The conv-order contract (`model.matting.convs_in_graph_order`), layer by layer: the k-th
    registered conv computes, on a real frame, what the graph's k-th distinct conv computes.
    Loading pairs weights by that order, so two same-shaped convs registered in swapped order
    would load and run, each with the other's weights, and differ here."""
    import onnxruntime as ort

    model = onnx.load(str(weights_file))
    first_use: dict[str, str] = {}  # weight -> the output of the first node that runs it
    for node in model.graph.node:
        if node.op_type == "Conv":
            first_use.setdefault(node.input[1], node.output[0])
    taps = list(first_use.values())
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in taps)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    src = _frames(clip_frames, 1, (144, 176))
    zero = np.zeros((1, 1, 1, 1), np.float32)
    feeds = {"src": src.numpy(), "downsample_ratio": np.asarray([0.5], np.float32)}
    feeds.update({f"r{i}i": zero for i in range(1, 5)})
    graph = session.run(taps, feeds)

    ours = _conv_outputs(rvm, src)
    assert len(ours) == len(graph)
    for (name, out), theirs in zip(ours, graph, strict=True):
        assert out.shape == theirs.shape, name
        np.testing.assert_allclose(out, theirs, atol=2e-3, rtol=1e-3, err_msg=name)
    # Not vacuous: two same-shaped convs holding each other's weights (what loading would do
    # after their attributes were swapped) differ from the graph.
    swapped = copy.deepcopy(rvm)
    convs = convs_in_graph_order(swapped)
    i, j = next(
        (i, j)
        for i in range(len(convs))
        for j in range(i + 1, len(convs))
        if convs[i][1].weight.shape == convs[j][1].weight.shape
    )
    with torch.no_grad():
        wi = convs[i][1].weight.clone()
        convs[i][1].weight.copy_(convs[j][1].weight)
        convs[j][1].weight.copy_(wi)
    outs = _conv_outputs(swapped, src)
    assert not np.allclose(outs[i][1], graph[i], atol=2e-3, rtol=1e-3)


def _conv_outputs(net: MattingNetwork, src: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """Each registered conv's output on its first call, one frame at ratio 0.5."""
    convs = convs_in_graph_order(net)
    seen: list[torch.Tensor | None] = [None] * len(convs)

    def tap(k: int):  # type: ignore[no-untyped-def]
        def hook(_module, _inputs, output):  # type: ignore[no-untyped-def]
            if seen[k] is None:
                seen[k] = output.detach()

        return hook

    handles = [conv.register_forward_hook(tap(k)) for k, (_, conv) in enumerate(convs)]
    try:
        net(src, None, 0.5)
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for (name, _), tensor in zip(convs, seen, strict=True):
        assert tensor is not None, f"{name} did not run"
        out.append((name, tensor.numpy()))
    return out


def test_mismatching_file_is_refused(weights_file: Path, tmp_path: Path) -> None:
    model = onnx.load(str(weights_file))
    # Shrink the first convolution's output channels: the architecture no longer fits.
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    for init in model.graph.initializer:
        if init.name == first.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:8], init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(WeightsError, match=r"convolution #0 .*weight shape"):
        load_rvm_from_onnx(bad)
    with pytest.raises(WeightsError, match="not found"):
        load_rvm_from_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(WeightsError, match="cannot read"):
        load_rvm_from_onnx(tmp_path / "junk.onnx")


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_time_series_equals_frame_by_frame(rvm: MattingNetwork, clip_frames, ratio: float) -> None:
    x = _frames(clip_frames, 4)
    with torch.no_grad():
        series = rvm(x[None], None, ratio)
        state: RecurrentState | None = None
        for t in range(4):
            fgr, pha, state = rvm(x[t : t + 1], state, ratio)
            torch.testing.assert_close(series.pha[:, t], pha, rtol=0, atol=0)
            torch.testing.assert_close(series.fgr[:, t], fgr, rtol=0, atol=0)
    assert state is not None
    for a, b in zip(series.state, state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_is_an_explicit_value(rvm: MattingNetwork, clip_frames) -> None:
    x = _frames(clip_frames, 2)
    with torch.no_grad():
        first = rvm(x[:1])
        assert isinstance(first.state, RecurrentState)
        assert [r.shape[1] for r in first.state] == [16, 20, 40, 64]
        # A zero state of shape [B,1,1,1] (the ONNX convention) equals "no state".
        zeros = RecurrentState(*(torch.zeros(1, 1, 1, 1) for _ in range(4)))
        torch.testing.assert_close(rvm(x[:1], zeros).pha, first.pha, rtol=0, atol=1e-5)
        # The state carries information: frame 1 with frame 0's state differs from a cold start.
        warm = rvm(x[1:2], first.state).pha
        cold = rvm(x[1:2]).pha
        assert (warm - cold).abs().max() > 1e-3
        # Calling again with the same state gives the same answer: nothing is kept inside.
        torch.testing.assert_close(rvm(x[1:2], first.state).pha, warm, rtol=0, atol=0)


def test_outputs_are_in_range_and_full_size(rvm: MattingNetwork, clip_frames) -> None:
    x = _frames(clip_frames, 1, size=(150, 201))  # odd sizes exercise the decoder's crops
    with torch.no_grad():
        out = rvm(x, None, 0.6)
    assert out.pha.shape == (1, 1, 150, 201)
    assert out.fgr.shape == (1, 3, 150, 201)
    assert out.pha.min() >= 0
    assert out.pha.max() <= 1
    assert out.pha.max() > 0.9
    assert out.pha.min() < 0.1


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_bad_downsample_ratio_is_refused(rvm: MattingNetwork, ratio: float) -> None:
    with pytest.raises(ValueError, match="downsample_ratio must be a number in"):
        rvm(torch.rand(1, 3, 64, 64), None, ratio)


def test_bad_input_shape_is_refused(rvm: MattingNetwork) -> None:
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        rvm(torch.rand(1, 4, 64, 64))
