from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from ptq4vm_core.model.resize import resize_scale


def _ort_resize(x: np.ndarray, scale: float) -> np.ndarray:
    """ONNX Runtime's Resize exactly as the published RVM graph calls it."""
    node = helper.make_node(
        "Resize",
        ["x", "roi", "scales"],
        ["y"],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
            helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, scale, scale]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("size", "scale"), [((720, 1280), 0.375), ((288, 512), 0.5), ((144, 176), 0.4), ((61, 47), 0.3)]
)
def test_matches_onnx_runtime_bit_for_bit(size: tuple[int, int], scale: float) -> None:
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ours = resize_scale(x, scale).numpy()
    theirs = _ort_resize(x.numpy(), scale)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_agrees_with_pytorch_bilinear() -> None:
    x = torch.rand(2, 3, 100, 130, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(
        x, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )
    torch.testing.assert_close(resize_scale(x, 0.5), ref, rtol=0, atol=1e-5)


def test_differentiable() -> None:
    x = torch.rand(1, 1, 20, 20, requires_grad=True)
    resize_scale(x, 0.5).sum().backward()
    assert x.grad is not None
    # Each output pixel spreads weight 1 over its sources: the gradient sums to the pixel count.
    torch.testing.assert_close(x.grad.sum(), torch.tensor(100.0))


def test_too_small_output_is_refused() -> None:
    with pytest.raises(ValueError, match="use a larger ratio"):
        resize_scale(torch.rand(1, 3, 8, 8), 0.05)
