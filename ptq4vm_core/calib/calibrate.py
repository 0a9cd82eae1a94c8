"""Calibration as one job: data -> quantized model, for every method and bit width."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ptq4vm_core.calib.biq import ClosureReport, block_reconstruction
from ptq4vm_core.calib.closure_data import SeqEnv
from ptq4vm_core.calib.data import CalibrationSet
from ptq4vm_core.calib.methods import (
    PROFILES,
    Method,
    Profile,
    ReconstructionConfig,
)
from ptq4vm_core.calib.progress import ProgressCallback, ProgressTracker, log_progress
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.model import quant_layers, quantize_model
from ptq4vm_core.quant.spec import QuantPolicy, parse_bits

logger = logging.getLogger(__name__)

FIRST_LAYERS = ("backbone.features.0.0",)
LAST_LAYERS = ("project_mat", "refiner.conv3")
QDROP_PROB = 0.5


def rvm_policy(bits: str, *, first_last_8bit: bool = True) -> QuantPolicy:
    """Every convolution quantized at `bits` ("w8a8", "w4a8", "w4a4"); the first and the last
    layers at W8A8 unless switched off, as BRECQ and QDrop do."""
    w_bits, a_bits = parse_bits(bits)
    keep8 = (*FIRST_LAYERS, *LAST_LAYERS) if first_last_8bit else ()
    return QuantPolicy.from_bits(w_bits, a_bits, first_last_8bit=keep8)


def start_env(model: MattingNetwork, data: CalibrationSet) -> SeqEnv:
    """Model inputs for every calibration frame, [N,T,...], network at full calibration size."""
    n, t = data.frames.shape[:2]
    env = model.frame_env(data.frames.flatten(0, 1), None, 1.0)
    return {k: v.reshape(n, t, *v.shape[1:]) for k, v in env.items() if v is not None}


@dataclass
class CalibrationResult:
    model: torch.nn.Module  # the quantized MattingNetwork, all layers in QUANTIZED mode
    policy: QuantPolicy
    method: Method
    bits: str
    profile: Profile
    reports: list[ClosureReport]
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def calibrate(
    fp_model: MattingNetwork,
    data: CalibrationSet,
    *,
    bits: str,
    method: Method,
    profile: Profile,
    device: str = "cpu",
    first_last_8bit: bool = True,
    progress: ProgressCallback = log_progress,
    seed: int = 0,
) -> CalibrationResult:
    """Quantize a copy of `fp_model` (never modified) with `method` on `data`."""
    method, profile = Method(method), Profile(profile)
    if method is Method.PTQ4VM:
        raise ValueError("method ptq4vm (BIQ + GAC + OFA) is not available in this version yet")
    torch.manual_seed(seed)
    dev = torch.device(device)
    timings: dict[str, float] = {}
    started = time.monotonic()
    policy = rvm_policy(bits, first_last_8bit=first_last_8bit)
    fp = copy.deepcopy(fp_model).to(dev).eval().requires_grad_(False)
    q_model = quantize_model(fp, policy).to(dev)
    if not isinstance(q_model, MattingNetwork):
        raise TypeError("quantize_model must return the same model class")
    if method is Method.MINMAX:
        for layer in quant_layers(q_model).values():  # plain min/max ranges, no Lp search
            layer.weight_quantizer.base.init_range(layer.weight, grid=1)
            layer.weight_quantizer.init_alpha(layer.weight)
    timings["setup"] = time.monotonic() - started

    prof = PROFILES[profile]
    cfg = None
    if method is not Method.MINMAX:
        cfg = ReconstructionConfig(
            iters=prof.iters,
            batch=prof.batch,
            drop_prob=QDROP_PROB if method is Method.QDROP else 0.0,
            seed=seed,
        )
    env = {k: v.to(dev) for k, v in start_env(fp, data).items()}
    closures = q_model.closures()
    tracker = ProgressTracker(progress, overall=float(len(closures)))
    t0 = time.monotonic()
    _, reports = block_reconstruction(
        fp.closures(),
        q_model,
        closures,
        env,
        cfg,
        grid=1 if method is Method.MINMAX else 100,
        tracker=tracker,
    )
    timings["biq"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - started
    q_model.eval()
    return CalibrationResult(
        q_model, policy, method, bits, profile, reports, timings,
        {"profile": prof.to_dict(), "reconstruction": cfg.to_dict() if cfg else None},
    )  # fmt: skip
