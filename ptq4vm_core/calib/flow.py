"""Optical flow for PTQ4VM's Optical Flow Assistance (OFA), with occlusion masking.

During calibration the previous frame's alpha is warped into the current frame along
precomputed backward flow, and an L1 loss ties the current prediction to it. Beyond the paper,
pixels whose flow fails the forward-backward consistency check of Sundaram et al. (2010)
(occlusions, disocclusions, bad matches) are left out of that loss.

Flow convention: a flow field ``[..,2,H,W]`` holds ``(dx, dy)`` in pixels per pixel ``p``;
``warp(x, flow)[p] = x[p + flow[p]]``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ptq4vm_core.files import atomic_path
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when flow, mask or the cache layout change meaning
PairFlow = Callable[[Tensor, Tensor], Tensor]  # ([1,3,H,W], [1,3,H,W]) in [0,1] -> [1,2,H,W]


class FlowError(RuntimeError):
    """A flow backend cannot be used (e.g. RAFT requested without its weights)."""


class FlowBackend(StrEnum):
    DIS = "dis"
    RAFT = "raft"


@dataclass(frozen=True)
class FlowSet:
    """Flows for clips of T frames. flow: ``[N,T-1,2,H,W]`` float32 pixels, entry t-1 the
    backward flow t -> t-1 that warps frame t-1's alpha into frame t; mask: ``[N,T-1,1,H,W]``
    in {0,1}, 1 where that flow passed the consistency check; backend: the FlowBackend value."""

    flow: Tensor
    mask: Tensor
    backend: str

    @property
    def reliable_fraction(self) -> float:
        """Fraction of pixels whose flow is trusted, in [0,1]."""
        return float(self.mask.float().mean())


def raft_weights_path() -> Path:
    """Where RAFT-large weights (torchvision's state dict, as safetensors) must be placed."""
    return cache_root() / "flow" / "raft_large.safetensors"


def _raft_missing() -> str | None:
    """Why RAFT cannot run, or None when it can."""
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:  # absent, or built for another torch
        return f"torchvision cannot be imported ({exc})"
    if not raft_weights_path().is_file():
        return f"{raft_weights_path()} does not exist"
    return None


def default_backend() -> FlowBackend:
    """RAFT when torchvision and its weights file are present, otherwise DIS."""
    return FlowBackend.DIS if _raft_missing() else FlowBackend.RAFT


def dis_flow(prev: NDArray[np.uint8], cur: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Dense DIS flow from `prev` to `cur` (both ``[H,W,3]`` uint8 RGB): ``[H,W,2]`` float32
    (dx, dy) such that prev pixel (x, y) moves to (x+dx, y+dy) in cur."""
    if prev.shape != cur.shape or prev.ndim != 3 or prev.shape[2] != 3:
        raise ValueError(f"expected two [H,W,3] RGB frames, got {prev.shape} and {cur.shape}")
    if prev.dtype != np.uint8 or cur.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {prev.dtype} and {cur.dtype}")
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0 = cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY)
    g1 = cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY)
    flow = np.zeros((*g0.shape, 2), dtype=np.float32)  # output only: no initial flow is used
    return np.asarray(dis.calc(g0, g1, flow), dtype=np.float32)


def _grid(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Absolute sampling positions p + flow[p]: x and y, each ``[B,H,W]`` in pixels."""
    _, _, H, W = flow.shape
    ys = torch.arange(H, dtype=flow.dtype, device=flow.device).view(1, H, 1)
    xs = torch.arange(W, dtype=flow.dtype, device=flow.device).view(1, 1, W)
    return xs + flow[:, 0], ys + flow[:, 1]


def _check_flow(flow: Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow [B,2,H,W], got {tuple(flow.shape)}")


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: ``out[p] = x[p + flow[p]]``, bilinear, zeros outside the image.

    x: ``[B,C,H,W]``; flow: ``[B,2,H,W]`` pixels. Returns ``[B,C,H,W]``, differentiable in x.
    """
    _check_flow(flow)
    if x.ndim != 4 or x.shape[0] != flow.shape[0] or x.shape[2:] != flow.shape[2:]:
        raise ValueError(f"x {tuple(x.shape)} does not match flow {tuple(flow.shape)}")
    _, _, H, W = x.shape
    gx, gy = _grid(flow.double())
    # align_corners=True maps -1/+1 to the centres of the edge pixels, so integer flows land on
    # pixel centres; sampling in float64 keeps the normalise/unnormalise round trip from
    # leaking ~1e-6 of the neighbours in, so integer shifts reproduce pixels exactly.
    grid = torch.stack((2 * gx / max(W - 1, 1) - 1, 2 * gy / max(H - 1, 1) - 1), dim=-1)
    out = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


def inside(flow: Tensor) -> Tensor:
    """``[B,1,H,W]`` float: 1.0 where ``p + flow[p]`` lies inside the image, else 0.0."""
    _check_flow(flow)
    _, _, H, W = flow.shape
    gx, gy = _grid(flow)
    ok = (gx >= 0) & (gx <= W - 1) & (gy >= 0) & (gy <= H - 1)
    return ok.unsqueeze(1).to(flow.dtype)


def consistency_mask(
    flow_back: Tensor, flow_fwd: Tensor, *, alpha1: float = 0.01, alpha2: float = 0.5
) -> Tensor:
    """Forward-backward check (Sundaram et al. 2010) for flow_back (frame t -> t-1).

    flow_back, flow_fwd (t-1 -> t): ``[B,2,H,W]`` pixels. With ``b = flow_back[p]`` and ``f``
    flow_fwd sampled at ``p + b``, p is reliable iff ``p + b`` is inside the image and
    ``|b + f|^2 <= alpha1 (|b|^2 + |f|^2) + alpha2``. Returns ``[B,1,H,W]`` float in {0,1}.
    """
    if flow_back.shape != flow_fwd.shape:
        raise ValueError(f"flow shapes differ: {tuple(flow_back.shape)} vs {tuple(flow_fwd.shape)}")
    b = flow_back
    f = warp(flow_fwd, b)
    err = (b + f).square().sum(1, keepdim=True)
    bound = alpha1 * (b.square().sum(1, keepdim=True) + f.square().sum(1, keepdim=True)) + alpha2
    return inside(b) * (err <= bound).to(b.dtype)


def _dis_pair(a: Tensor, b: Tensor) -> Tensor:
    def to_u8(img: Tensor) -> NDArray[np.uint8]:
        arr = (img[0].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(arr.permute(1, 2, 0).numpy())

    flow = dis_flow(to_u8(a), to_u8(b))
    return torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0)


def _raft_pair() -> PairFlow:
    """RAFT-large from local safetensors weights; never downloads, never unpickles."""
    missing = _raft_missing()
    if missing:
        raise FlowError(
            f"RAFT flow is unavailable: {missing}. Install torchvision and place RAFT-large "
            f"weights (torchvision's raft_large state dict saved with safetensors) at "
            f"{raft_weights_path()}; nothing is downloaded. Or use backend 'dis'."
        )
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(load_file(raft_weights_path()))
    model.eval()

    @torch.no_grad()
    def pair(a: Tensor, b: Tensor) -> Tensor:
        model.to(a.device)
        H, W = a.shape[-2:]
        pad = (0, -W % 8, 0, -H % 8)  # RAFT needs sizes divisible by 8
        a8 = F.pad(a * 2 - 1, pad, mode="replicate")
        b8 = F.pad(b * 2 - 1, pad, mode="replicate")
        flow: Tensor = model(a8, b8)[-1]
        return flow[..., :H, :W].float().cpu()

    return pair


def compute_flows(
    frames: Tensor,
    backend: FlowBackend | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FlowSet:
    """Backward flows t -> t-1 and their consistency masks for every consecutive pair.

    frames: ``[N,T,3,H,W]`` float in [0,1], T >= 2. progress(done, total) counts frame pairs.
    Raises FlowError when RAFT is requested but unavailable.
    """
    if frames.ndim != 5 or frames.shape[1] < 2 or frames.shape[2] != 3:
        raise ValueError(f"expected frames [N,T>=2,3,H,W], got {tuple(frames.shape)}")
    backend = FlowBackend(backend) if backend is not None else default_backend()
    pair = _raft_pair() if backend is FlowBackend.RAFT else _dis_pair
    N, T = frames.shape[:2]
    flows, masks = [], []
    for n in range(N):
        for t in range(1, T):
            cur, prev = frames[n, t : t + 1].float(), frames[n, t - 1 : t].float()
            back, fwd = pair(cur, prev), pair(prev, cur)
            flows.append(back[0])
            masks.append(consistency_mask(back, fwd)[0])
            if progress is not None:
                progress(n * (T - 1) + t, N * (T - 1))
    H, W = frames.shape[-2:]
    flow = torch.stack(flows).view(N, T - 1, 2, H, W)
    mask = torch.stack(masks).view(N, T - 1, 1, H, W)
    return FlowSet(flow=flow, mask=mask, backend=backend.value)


def _cache_key(frames: Tensor, backend: FlowBackend) -> str:
    h = hashlib.sha256()
    h.update(frames.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(f"|{tuple(frames.shape)}|{backend.value}|v{FORMAT_VERSION}".encode())
    return h.hexdigest()


def _read_cache(path: Path, shape: torch.Size, backend: FlowBackend) -> FlowSet:
    """Raises SafetensorError/OSError (unreadable) or ValueError (not what was asked for)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        flow, mask = handle.get_tensor("flow"), handle.get_tensor("mask")
    N, T, _, H, W = shape
    expected = {"backend": backend.value, "format_version": str(FORMAT_VERSION)}
    if {k: meta.get(k) for k in expected} != expected:
        raise ValueError(f"metadata {meta} does not match {expected}")
    if flow.shape != (N, T - 1, 2, H, W) or mask.shape != (N, T - 1, 1, H, W):
        raise ValueError(f"shapes {tuple(flow.shape)}, {tuple(mask.shape)} do not fit {shape}")
    return FlowSet(flow=flow, mask=mask, backend=backend.value)


def _write_cache(path: Path, flows: FlowSet) -> None:
    """Writes atomically: readers see the old file or the complete new one."""
    tensors = {"flow": flows.flow.contiguous(), "mask": flows.mask.contiguous()}
    meta = {"backend": flows.backend, "format_version": str(FORMAT_VERSION)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_or_compute_flows(
    frames: Tensor,
    *,
    cache_dir: Path | None = None,
    backend: FlowBackend | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FlowSet:
    """compute_flows, cached on disk under ``cache_dir`` (default ``$PTQ4VM_HOME/cache/flow``)
    by a hash of the frames, their shape, the backend and FORMAT_VERSION. A corrupt or
    mismatched cache file is logged and recomputed."""
    backend = FlowBackend(backend) if backend is not None else default_backend()
    directory = cache_dir if cache_dir is not None else cache_root() / "cache" / "flow"
    path = directory / f"{_cache_key(frames, backend)}.safetensors"
    if path.is_file():
        try:
            flows = _read_cache(path, frames.shape, backend)
        except (SafetensorError, OSError, ValueError) as exc:
            logger.warning("flow cache %s unusable (%s); recomputing", path, exc)
        else:
            logger.info("flow cache hit %s: %.1f%% reliable", path, 100 * flows.reliable_fraction)
            return flows
    flows = compute_flows(frames, backend, progress)
    _write_cache(path, flows)
    logger.info(
        "flow cache miss, computed %s flows -> %s: %.1f%% reliable",
        backend.value,
        path,
        100 * flows.reliable_fraction,
    )
    return flows


def ofa_loss(alpha: Tensor, alpha_prev: Tensor, flow: Tensor, mask: Tensor | None) -> Tensor:
    """OFA temporal prior: masked-mean L1 between alpha and alpha_prev warped along flow.

    alpha, alpha_prev: ``[B,1,H,W]`` in [0,1]; flow: ``[B,2,H,W]`` backward flow t -> t-1;
    mask: ``[B,1,H,W]`` in {0,1}, or None for every pixel whose source lies inside the image.
    alpha_prev is detached: the warped previous alpha is a target, not something to move.
    Returns a scalar ``sum(mask |d|) / max(sum(mask), 1)``.
    """
    if alpha.shape != alpha_prev.shape or alpha.ndim != 4 or alpha.shape[1] != 1:
        raise ValueError(
            f"expected alpha and alpha_prev [B,1,H,W], got {tuple(alpha.shape)} "
            f"and {tuple(alpha_prev.shape)}"
        )
    target = warp(alpha_prev.detach(), flow)
    m = inside(flow) if mask is None else mask
    if m.shape != alpha.shape:
        raise ValueError(f"mask {tuple(m.shape)} does not match alpha {tuple(alpha.shape)}")
    m = m.to(alpha.dtype)
    return (m * (alpha - target).abs()).sum() / m.sum().clamp_min(1.0)
