"""Optical flow for OFA: warping, the OFA loss, occlusion masks, DIS, the disk cache, RAFT."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from safetensors.torch import save_file

from ptq4vm_core.calib import flow as flow_mod
from ptq4vm_core.calib.flow import (
    FlowBackend,
    FlowError,
    FlowSet,
    compute_flows,
    consistency_mask,
    default_backend,
    dis_flow,
    inside,
    load_or_compute_flows,
    ofa_loss,
    raft_weights_path,
    warp,
)


def texture(h: int, w: int, seed: int, lo: float = 0.0, hi: float = 1.0) -> NDArray[np.uint8]:
    """Smooth random RGB texture, [h,w,3] uint8 spanning [lo,hi] * 255."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    r = np.asarray(cv2.GaussianBlur(noise, (0, 0), 1.5), dtype=np.float32)
    r = (r - r.min()) / (r.max() - r.min())
    return ((lo + (hi - lo) * r) * 255).round().astype(np.uint8)


def to_frames(*images: NDArray[np.uint8]) -> torch.Tensor:
    """[1,T,3,H,W] float in [0,1] from T [H,W,3] uint8 images."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)[None]


def const_flow(dx: float, dy: float, h: int = 32, w: int = 48, b: int = 1) -> torch.Tensor:
    return torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(b, 2, h, w).clone()


def test_warp_integer_translation_is_exact() -> None:
    x = torch.rand(2, 3, 32, 48)
    out = warp(x, const_flow(3, -2, b=2))
    # out[y, x] = x[y-2, x+3]: defined for y >= 2 and x <= 44
    assert torch.equal(out[..., 2:, :45], x[..., :30, 3:])
    assert float(out[..., :2, :].abs().max()) < 1e-12
    assert float(out[..., 45:].abs().max()) < 1e-12
    expected_inside = torch.zeros(2, 1, 32, 48)
    expected_inside[..., 2:, :45] = 1
    assert torch.equal(inside(const_flow(3, -2, b=2)), expected_inside)


def test_warp_fractional_flow_is_bilinear() -> None:
    x = torch.rand(1, 1, 32, 48)
    flow = torch.zeros(1, 2, 32, 48)
    flow[0, :, 7, 5] = torch.tensor([0.25, 0.5])  # pixel (x=5, y=7) samples (5.25, 7.5)
    img = x[0, 0]
    by_hand = 0.5 * (0.75 * img[7, 5] + 0.25 * img[7, 6]) + 0.5 * (
        0.75 * img[8, 5] + 0.25 * img[8, 6]
    )
    out = warp(x, flow)
    torch.testing.assert_close(out[0, 0, 7, 5], by_hand, atol=1e-6, rtol=0)


def test_warp_is_differentiable_and_checks_shapes() -> None:
    x = torch.rand(1, 2, 32, 48, requires_grad=True)
    warp(x, const_flow(1.5, 0.5)).sum().backward()
    assert x.grad is not None
    assert float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="flow"):
        warp(x, torch.zeros(1, 2, 16, 48))
    with pytest.raises(ValueError, match=r"\[B,2,H,W\]"):
        inside(torch.zeros(1, 3, 32, 48))


def test_ofa_loss_zero_on_perfect_warp_and_positive_when_perturbed() -> None:
    torch.manual_seed(0)
    alpha_prev = torch.rand(2, 1, 32, 48, requires_grad=True)
    flow = const_flow(2.3, -1.6, b=2) + 0.3 * torch.randn(2, 2, 32, 48)
    alpha = warp(alpha_prev.detach(), flow).requires_grad_()
    assert ofa_loss(alpha, alpha_prev, flow, None).item() == 0.0

    perturbed = alpha.detach().clone()
    perturbed[..., 10:20, 10:20] += 0.2
    perturbed.requires_grad_()
    loss = ofa_loss(perturbed, alpha_prev, flow, None)
    assert loss.item() > 0
    loss.backward()
    assert perturbed.grad is not None
    assert alpha_prev.grad is None  # the warped prior is a target


def test_ofa_loss_is_masked_mean() -> None:
    alpha = torch.zeros(1, 1, 32, 48)
    alpha[..., :, :24] = 0.5
    flow = torch.zeros(1, 2, 32, 48)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., :16, 20:28] = 1  # half of the masked pixels differ by 0.5
    loss = ofa_loss(alpha, torch.zeros_like(alpha), flow, mask)
    assert float(loss) == pytest.approx(0.25)
    assert float(ofa_loss(alpha, torch.zeros_like(alpha), flow, torch.zeros_like(mask))) == 0.0


def test_consistency_mask_marks_disocclusion_and_leaving_pixels() -> None:
    H, W = 32, 48
    rows = slice(8, 18)
    fwd = torch.zeros(1, 2, H, W)  # t-1 -> t: the square at x in [10,20) moves +5
    fwd[0, 0, rows, 10:20] = 5
    back = torch.zeros(1, 2, H, W)  # t -> t-1: the square now at x in [15,25) came from -5
    back[0, 0, rows, 15:25] = -5
    expected = torch.ones(1, 1, H, W)
    expected[0, 0, rows, 10:15] = 0  # background uncovered at t: no source in t-1
    assert torch.equal(consistency_mask(back, fwd), expected)

    back[0, 0, 25:, 40:] = 10  # these pixels would come from beyond the right edge
    expected[0, 0, 25:, 40:] = 0
    assert torch.equal(consistency_mask(back, fwd), expected)


def test_dis_recovers_translation() -> None:
    big = texture(74, 74, seed=0)
    prev, cur = big[5:69, 5:69], big[7:71, 2:66]  # content moves by (+3, -2)
    flow = dis_flow(prev, cur)
    assert flow.shape == (64, 64, 2)
    assert flow.dtype == np.float32
    median = np.median(flow[8:-8, 8:-8].reshape(-1, 2), axis=0)
    np.testing.assert_allclose(median, [3.0, -2.0], atol=0.5)
    with pytest.raises(ValueError, match="RGB"):
        dis_flow(prev, cur[:32])


def test_compute_flows_masks_the_disoccluded_band() -> None:
    # An 8 px move (one DIS patch) of a brighter textured square over a darker textured
    # background; smaller moves are smoothed over by DIS at this tiny size.
    H, W, S, D = 96, 128, 32, 8
    y0, x0 = 32, 52
    background, square = texture(H, W, seed=1, hi=0.6), texture(S, S, seed=2, lo=0.4)
    f0, f1 = background.copy(), background.copy()
    f0[y0 : y0 + S, x0 : x0 + S] = square
    f1[y0 : y0 + S, x0 + D : x0 + D + S] = square
    calls: list[tuple[int, int]] = []
    flows = compute_flows(to_frames(f0, f1), FlowBackend.DIS, lambda d, t: calls.append((d, t)))

    assert flows.backend == "dis"
    assert flows.flow.shape == (1, 1, 2, H, W)
    assert flows.mask.shape == (1, 1, 1, H, W)
    assert calls == [(1, 1)]
    mask = flows.mask[0, 0, 0]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    band = mask[y0 : y0 + S, x0 : x0 + D]
    assert float(band.mean()) < 0.2  # most of the uncovered band is masked out
    far = torch.ones(H, W, dtype=torch.bool)
    far[y0 - 8 : y0 + S + 8, x0 - 8 : x0 + S + D + 8] = False
    assert float(mask[far].mean()) > 0.95
    moved = flows.flow[0, 0, 0, y0 + 4 : y0 + S - 4, x0 + D + 4 : x0 + D + S - 4]
    assert float(moved.median()) == pytest.approx(-D, abs=0.5)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of compute_flows made by load_or_compute_flows."""
    calls: list[int] = []
    real = flow_mod.compute_flows

    def counting(*args: object, **kwargs: object) -> FlowSet:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flow_mod, "compute_flows", counting)
    return calls


def small_frames(seed: int = 0) -> torch.Tensor:
    """[2,3,3,32,48]: two clips of three textured frames."""
    clips = [[texture(32, 48, seed=seed + 3 * n + t) for t in range(3)] for n in range(2)]
    return torch.cat([to_frames(*clip) for clip in clips])


def test_cache_hit_returns_equal_flows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: list[int]
) -> None:
    monkeypatch.setenv("PTQ4VM_HOME", str(tmp_path))
    frames = small_frames()
    first = load_or_compute_flows(frames, backend=FlowBackend.DIS)
    files = list((tmp_path / "cache" / "flow").glob("*.safetensors"))
    assert len(files) == 1
    assert first.flow.shape == (2, 2, 2, 32, 48)
    assert first.mask.shape == (2, 2, 1, 32, 48)
    assert 0.0 < first.reliable_fraction <= 1.0

    second = load_or_compute_flows(frames, backend=FlowBackend.DIS)
    assert counted == [1]
    assert torch.equal(first.flow, second.flow)
    assert torch.equal(first.mask, second.mask)
    assert second.backend == "dis"

    load_or_compute_flows(small_frames(seed=1), backend=FlowBackend.DIS)
    assert counted == [1, 1]  # other frames, other key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shape"])
def test_bad_cache_file_is_recomputed(
    tmp_path: Path, counted: list[int], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    frames = small_frames()
    good = load_or_compute_flows(frames, cache_dir=tmp_path, backend=FlowBackend.DIS)
    (path,) = tmp_path.glob("*.safetensors")
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-16])
    else:
        meta = {"backend": "dis", "format_version": str(flow_mod.FORMAT_VERSION)}
        save_file({"flow": torch.zeros(1, 2, 4, 4), "mask": torch.zeros(1, 1, 4, 4)}, path, meta)

    with caplog.at_level(logging.WARNING, logger=flow_mod.__name__):
        again = load_or_compute_flows(frames, cache_dir=tmp_path, backend=FlowBackend.DIS)
    assert counted == [1, 1]
    assert "recomputing" in caplog.text
    assert torch.equal(again.flow, good.flow)
    load_or_compute_flows(frames, cache_dir=tmp_path, backend=FlowBackend.DIS)
    assert counted == [1, 1]  # the rewritten file is a hit
    assert not list(tmp_path.glob(".*.tmp"))


def test_raft_unavailable_raises_helpful_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTQ4VM_HOME", str(tmp_path))
    assert raft_weights_path() == tmp_path / "flow" / "raft_large.safetensors"
    assert default_backend() is FlowBackend.DIS
    frames = small_frames()[:1, :2]
    with pytest.raises(FlowError, match=r"raft_large\.safetensors") as info:
        compute_flows(frames, FlowBackend.RAFT)
    assert "nothing is downloaded" in str(info.value)
    with pytest.raises(FlowError):
        load_or_compute_flows(frames, cache_dir=tmp_path, backend=FlowBackend.RAFT)
