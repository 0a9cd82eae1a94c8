"""Calibration as one job: data -> quantized model, for every method and bit width."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptq4vm_core.calib.biq import ClosureReport, block_reconstruction
from ptq4vm_core.calib.closure_data import SeqEnv
from ptq4vm_core.calib.data import CalibrationSet
from ptq4vm_core.calib.flow import FlowSet, load_or_compute_flows
from ptq4vm_core.calib.gac import GacConfig, GacReport, global_correction
from ptq4vm_core.calib.methods import (
    OFA_WEIGHT,
    PROFILES,
    QDROP_PROB,
    Method,
    Profile,
    Ptq4vmOptions,
    strategy,
)

# Re-exported: callers set PTQ4VM's switches through calibrate().
__all__ = ["OFA_WEIGHT", "QDROP_PROB", "CalibrationResult", "Ptq4vmOptions", "calibrate"]
from ptq4vm_core.calib.progress import ProgressCallback, ProgressTracker, log_progress
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.model.recipe import rvm_policy
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import quant_layers, quantize_model, set_mode
from ptq4vm_core.quant.spec import Int8Target, QuantPolicy, parse_bits

logger = logging.getLogger(__name__)


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
    gac: GacReport | None = None
    target: Int8Target = Int8Target.VNNI


def calibrate(
    fp_model: MattingNetwork,
    data: CalibrationSet,
    *,
    bits: str,
    method: Method,
    profile: Profile,
    device: str = "cpu",
    policy: QuantPolicy | None = None,
    progress: ProgressCallback = log_progress,
    seed: int = 0,
    ptq4vm: Ptq4vmOptions | None = None,
    biq_model: MattingNetwork | None = None,
    flow_cache: Path | None = None,
    target: Int8Target = Int8Target.VNNI,
) -> CalibrationResult:
    """Quantize a copy of `fp_model` (never modified) with `method` on `data`.

    `policy`: what to quantize and how (default: the model's recipe at `bits` for the int8
    kernels of `target`, `rvm_policy(bits, target=target)`: every integer tensor of the
    deployed graph); its bits must be `bits`'. `target` is recorded with the result (the
    artifact's manifest); a given policy must already be built for it.

    For PTQ4VM, `ptq4vm` holds the switches (default: QDrop BIQ + GAC + OFA). `biq_model`, a
    quantized model from an earlier BIQ run with the same bits (e.g. a loaded QDrop artifact),
    is copied and used instead of running BIQ again; `flow_cache` is where OFA's flow is
    cached (default under the cache root).
    """
    method, profile = Method(method), Profile(profile)
    plan = strategy(method, ptq4vm)
    if biq_model is not None and plan.global_stage is None:
        raise ValueError(f"biq_model applies to method ptq4vm, not {method}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    timings: dict[str, float] = {}
    started = time.monotonic()
    target = Int8Target(target)
    policy = policy or rvm_policy(bits, target=target)
    if (policy.weight_bits, policy.act_bits) != parse_bits(bits):
        raise ValueError(
            f"the policy quantizes at w{policy.weight_bits}a{policy.act_bits}, not at {bits}"
        )
    fp = copy.deepcopy(fp_model).to(dev).eval().requires_grad_(False)
    if biq_model is not None:
        q_model = _reuse_biq(biq_model, policy, dev)
    else:
        quantized = quantize_model(fp, policy).to(dev)
        if not isinstance(quantized, MattingNetwork):
            raise TypeError("quantize_model must return the same model class")
        q_model = quantized
    if not plan.range_search:
        for layer in quant_layers(q_model).values():  # plain min/max ranges, no Lp search
            layer.weight_quantizer.base.init_range(layer.weight, grid=1)
            layer.weight_quantizer.init_alpha(layer.weight)
    timings["setup"] = time.monotonic() - started

    prof = PROFILES[profile]
    cfg = plan.reconstruction(prof, seed)
    closures = q_model.closures()
    global_units = GLOBAL_STAGE_UNITS if plan.has_global_stage else 0.0
    tracker = ProgressTracker(progress, overall=len(closures) + global_units)
    reports: list[ClosureReport] = []
    if biq_model is not None:
        tracker.update("biq", "reused", 1, 1, advance=float(len(closures)))
    else:
        t0 = time.monotonic()
        env = {k: v.to(dev) for k, v in start_env(fp, data).items()}
        _, reports = block_reconstruction(
            fp.closures(),
            q_model,
            closures,
            env,
            cfg,
            grid=plan.range_grid,
            tracker=tracker,
        )
        del env
        timings["biq"] = time.monotonic() - t0
    config: dict[str, Any] = {
        "profile": prof.to_dict(),
        "reconstruction": cfg.to_dict() if cfg else None,
    }
    gac_report = None
    opts = plan.global_stage
    if opts is not None:
        config["ptq4vm"] = opts.to_dict() | {"biq_reused": biq_model is not None}
        if opts.global_stage:
            gac_cfg = GacConfig(
                iters=prof.gac_iters,
                window=prof.gac_window,
                ofa_weight=opts.ofa_weight if opts.ofa else 0.0,
                mask_occlusions=opts.mask_occlusions,
                affine=opts.gac,
                seed=seed,
            )
            flows = _flows(data, flow_cache, tracker, timings)
            t0 = time.monotonic()
            gac_report = global_correction(q_model, fp, data, gac_cfg, flows=flows, tracker=tracker)
            timings["gac"] = time.monotonic() - t0
            config["gac"] = gac_cfg.to_dict()
            config["gac_report"] = gac_report.to_dict()
            config["flow"] = {"backend": flows.backend, "reliable": flows.reliable_fraction}
            tracker.update("gac", "done", 1, 1, advance=global_units, loss=gac_report.mse_end)
    timings["total"] = time.monotonic() - started
    q_model.eval()
    return CalibrationResult(
        q_model, policy, method, bits, profile, reports, timings, config, gac_report, target
    )


GLOBAL_STAGE_UNITS = 6.0  # progress weight of the global stage against one BIQ closure


def _reuse_biq(biq_model: MattingNetwork, policy: QuantPolicy, dev: torch.device) -> MattingNetwork:
    """A copy of an earlier BIQ result, checked to quantize the same layers at the same bits."""
    layers = quant_layers(biq_model)
    for name, layer in layers.items():
        if layer.policy != policy.for_layer(name):
            raise ValueError(
                f"biq_model layer {name!r} is quantized as {layer.policy}, but this "
                f"calibration's policy says {policy.for_layer(name)}: use a BIQ result "
                "calibrated at the same bits"
            )
    model = copy.deepcopy(biq_model).to(dev)
    set_mode(model, QuantMode.QUANTIZED)
    return model


def _flows(
    data: CalibrationSet, cache: Path | None, tracker: ProgressTracker, timings: dict[str, float]
) -> FlowSet:
    t0 = time.monotonic()

    def progress(done: int, total: int) -> None:
        tracker.update("flow", "pairs", done, total)

    flows = load_or_compute_flows(data.frames, cache_dir=cache, progress=progress)
    timings["flow"] = time.monotonic() - t0
    return flows
