"""GAC (+ OFA): PTQ4VM's global stage, after BIQ.

Every quantized convolution gets GAC's gamma and beta (`ptq4vm_core.quant.affine`); they and
the activation step sizes are optimised together, over short frame sequences with the
recurrent state carried, to minimise the MSE between the quantized model's final alpha and the
target: the clip's ground-truth alpha where the calibration set has one, else the FP32 model's
alpha (label-free). With OFA, an L1 term ties each alpha to the previous alpha of the quantized
model warped by the optical flow between the two input frames, over the pixels whose flow is
reliable (`ptq4vm_core.calib.flow`). The BIQ rounding stays fixed; at the end the corrections
are absorbed into the integer weights and scales, so the model has no extra operation.

GAC's continuous shift (opt-in, `GacConfig.lr_bias` > 0): besides beta (whole grid steps of
the weight, coarse at 8 bits), every convolution's float bias learns a per-output-channel
correction in place. Deployed, the bias
is an int32 at the accumulator's scale s_x * s_w like any bias, so the learned value is what
the artifact stores and the exporter carries: nothing to absorb, nothing rounded beyond what
every bias already is. The sequences are split: the stage trains on most of them and decides
whether to keep its end on the rest (`GacConfig.holdout`), so it cannot keep a point that only
fits what it trained on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ptq4vm_core.calib.data import CalibrationSet
from ptq4vm_core.calib.flow import FlowSet, ofa_loss
from ptq4vm_core.calib.progress import ProgressTracker
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import (
    absorb_affine,
    activation_layers,
    attach_affine,
    quant_layers,
    set_mode,
)

logger = logging.getLogger(__name__)

EVAL_CHUNK = 8  # sequences per forward pass when scoring the whole set


@dataclass(frozen=True)
class GacConfig:
    """iters: optimisation steps; batch: sequences per step; window: frames per sequence a
    step trains on (a random run of consecutive frames, state carried from a fresh stream);
    lr_gamma (gamma is ~1), lr_beta (beta is in steps of the layer's grid), lr_act (activation
    step sizes, relative to each one's size), all cosine-annealed to 0; the parameters of the
    last step are kept unless they score worse than the start on the whole calibration set
    (then the start is kept), so the stage never makes the calibration objective worse;
    ofa_weight: lambda of the OFA term, 0 turns OFA off;
    mask_occlusions: OFA ignores pixels with unreliable flow (forward-backward check);
    affine: learn GAC's gamma and beta (False: only the step sizes learn, for `--no-gac`);
    lr_bias: GAC's continuous per-channel shift, learned in each conv's bias, at this rate
    relative to the layer's RMS bias (0, the default: the bias stays; only with `affine`;
    measured to overfit the small calibration sets, see docs/quantization.md);
    lr_fine: the rate of gamma and beta instead in layers with 8-bit weights (a grid 16x finer
    than 4 bits: at W8A8 1e-2 made the held-out objective worse, 1e-3 better);
    holdout: fraction of the sequences (every round(1/holdout)-th) the stage never trains on
    and judges its end on (0, or a set of one sequence: judged on the whole set)."""

    iters: int
    batch: int = 1
    window: int = 4
    lr_gamma: float = 1e-2
    lr_beta: float = 1e-2
    lr_act: float = 1e-3
    ofa_weight: float = 0.0
    mask_occlusions: bool = True
    affine: bool = True
    seed: int = 0
    lr_bias: float = 0.0
    holdout: float = 0.25
    lr_fine: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GacReport:
    """Over the whole calibration set, before and after: MSE of alpha against the target and
    the OFA residual (masked L1 between alpha and the warped previous alpha); `best_step` is
    the step whose parameters were kept: `iters` (the end of the schedule) or 0 (the start);
    `val_start`/`val_end`: the objective (MSE + lambda OFA) on the held-out sequences
    (`val_sequences` of them; the whole set when none is held out), which decided."""

    mse_start: float
    mse_end: float
    ofa_start: float
    ofa_end: float
    iters: int
    best_step: int
    layers: int
    val_start: float = float("nan")
    val_end: float = float("nan")
    val_sequences: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alpha_targets(fp_model: MattingNetwork, data: CalibrationSet) -> Tensor:
    """[N,T,1,H,W]: the ground truth where a sequence has one, else the FP32 model's alpha."""
    device = next(fp_model.parameters()).device
    targets = []
    with torch.no_grad():
        for start in range(0, data.num_sequences, EVAL_CHUNK):
            frames = data.frames[start : start + EVAL_CHUNK].to(device)
            targets.append(fp_model(frames, None, 1.0).pha)
    fp_alpha = torch.cat(targets)
    has = data.has_alpha.to(device).view(-1, 1, 1, 1, 1)
    return torch.where(has, data.alphas.to(device), fp_alpha)


def _sequence_losses(
    model: nn.Module, frames: Tensor, target: Tensor, flows: FlowSet | None, idx: Tensor,
    start: int, cfg: GacConfig,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(alpha MSE, OFA L1) averaged over frames start..start+window of sequences idx."""
    state = None
    previous: Tensor | None = None
    mse = torch.zeros((), device=frames.device)
    ofa = torch.zeros((), device=frames.device)
    steps = range(start, min(start + cfg.window, frames.shape[1]))
    for t in steps:
        out = model(frames[idx, t], state, 1.0)
        state = out.state
        mse = mse + (out.pha - target[idx, t]).pow(2).mean()
        if flows is not None and previous is not None:
            mask = flows.mask[idx, t - 1] if cfg.mask_occlusions else None
            ofa = ofa + ofa_loss(out.pha, previous, flows.flow[idx, t - 1], mask)
        previous = out.pha
    n = len(steps)
    return mse / n, ofa / max(1, n - 1)


def score(
    model: nn.Module, data: CalibrationSet, target: Tensor, flows: FlowSet | None,
    mask_occlusions: bool = True, sequences: Tensor | None = None,
) -> tuple[float, float]:  # fmt: skip
    """(alpha MSE, OFA residual) over `sequences` (default: the whole set), full length, no
    gradient."""
    cfg = GacConfig(iters=0, window=data.seq_len, mask_occlusions=mask_occlusions)
    frames = data.frames.to(target.device)
    chosen = torch.arange(data.num_sequences) if sequences is None else sequences
    mse = ofa = 0.0
    with torch.no_grad():
        for start in range(0, len(chosen), EVAL_CHUNK):
            idx = chosen[start : start + EVAL_CHUNK]
            m, o = _sequence_losses(model, frames, target, flows, idx, 0, cfg)
            mse += float(m) * len(idx)
            ofa += float(o) * len(idx)
    return mse / len(chosen), ofa / len(chosen)


def _trainables(
    model: nn.Module, affine: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[Tensor], list[nn.Parameter]]:
    """Attaches fresh corrections (if `affine`); returns (gammas, betas, biases, step sizes).
    The biases are the convolutions' own bias buffers (GAC's continuous shift), to be made
    trainable by the caller."""
    corrections = attach_affine(model) if affine else {}
    gammas = [a.gamma for a in corrections.values()]
    betas = [a.beta for a in corrections.values()]
    biases = [
        layer.bias
        for name, layer in quant_layers(model).items()
        if name in corrections and layer.bias is not None
    ]
    scales = [
        layer.act_quantizer.scale
        for layer in activation_layers(model).values()
        if layer.act_quantizer is not None
    ]
    return gammas, betas, biases, scales


def split(count: int, holdout: float) -> tuple[Tensor, Tensor]:
    """(training, held-out) sequence indices: every round(1/holdout)-th sequence is held out;
    with holdout 0 or fewer than two sequences, both are every sequence."""
    every = torch.arange(count)
    if holdout <= 0 or count < 2:
        return every, every
    held = every % max(2, round(1 / holdout)) == max(2, round(1 / holdout)) - 1
    if not bool(held.any()):
        held[-1] = True
    return every[~held], every[held]


def global_correction(
    q_model: MattingNetwork,
    fp_model: MattingNetwork,
    data: CalibrationSet,
    cfg: GacConfig,
    *,
    flows: FlowSet | None = None,
    tracker: ProgressTracker | None = None,
) -> GacReport:
    """Runs GAC (with OFA when cfg.ofa_weight > 0 and `flows` are given) on `q_model` in place
    and absorbs the result; q_model ends in QUANTIZED mode with no gradients. `fp_model` gives
    the label-free targets and is only read."""
    if cfg.ofa_weight > 0 and flows is None:
        raise ValueError("OFA needs the calibration set's optical flow (flows=None given)")
    device = next(q_model.buffers()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    target = alpha_targets(fp_model, data)
    frames = data.frames.to(device)
    if flows is not None:
        flows = FlowSet(flows.flow.to(device), flows.mask.to(device), flows.backend)
    flow_set = flows if cfg.ofa_weight > 0 else None
    q_model.requires_grad_(False)
    set_mode(q_model, QuantMode.QUANTIZED)
    if not 0 <= cfg.holdout < 1:
        raise ValueError(f"holdout={cfg.holdout} must be in [0, 1)")
    train, held = split(data.num_sequences, cfg.holdout)
    mse_start, ofa_start = score(q_model, data, target, flows, cfg.mask_occlusions)
    val_start = _objective(q_model, data, target, flows, cfg, held)
    gammas, betas, biases, scales = _trainables(q_model, cfg.affine)
    biases = biases if cfg.lr_bias > 0 else []
    params: list[Tensor] = [*gammas, *betas, *biases, *scales]
    groups: list[dict[str, Any]] = []
    fine = [layer.policy.weight.bits >= 8 for layer in quant_layers(q_model).values()]
    for gamma, beta, is_fine in zip(gammas, betas, fine if gammas else [], strict=True):
        groups += [{"params": [gamma], "lr": cfg.lr_fine if is_fine else cfg.lr_gamma},
                   {"params": [beta], "lr": cfg.lr_fine if is_fine else cfg.lr_beta}]  # fmt: skip
    # A bias moves at a rate relative to its layer's RMS bias: biases range over 1e-2..1e1.
    groups += [
        {"params": [b], "lr": cfg.lr_bias * max(float(b.detach().pow(2).mean().sqrt()), 1e-3)}
        for b in biases
    ]
    # Step sizes span orders of magnitude (8-bit vs 4-bit grids, image vs feature ranges):
    # each learns at a rate relative to its own size.
    groups += [{"params": [s], "lr": cfg.lr_act * float(s.detach())} for s in scales]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.iters))
    t_len = data.seq_len
    window = min(cfg.window, t_len)
    start_params = [p.detach().clone() for p in params]
    best_step, mse_end, ofa_end = 0, mse_start, ofa_start
    try:
        for p in params:
            p.requires_grad_(True)
        for step in range(1, cfg.iters + 1):
            idx = train[torch.randperm(len(train), generator=generator)[: cfg.batch]]
            start = int(torch.randint(0, t_len - window + 1, (), generator=generator))
            with torch.enable_grad():
                mse, ofa = _sequence_losses(q_model, frames, target, flow_set, idx, start, cfg)
                loss = mse + cfg.ofa_weight * ofa
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            with torch.no_grad():
                for scale in scales:  # a step size must stay positive
                    scale.clamp_(min=1e-8)
                for gamma in gammas:
                    gamma.clamp_(min=0.5, max=1.5)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"GAC diverged at step {step} (loss {value})")
            if tracker is not None and (step % 5 == 0 or step == cfg.iters):
                tracker.update("gac", "global", step, cfg.iters, loss=value)
        # One judgement, on the held-out sequences at full length, of where the schedule
        # ended. A running "best of" was tried: it picked mid-schedule points within a few
        # percent of the end on the calibration set and up to 30% worse on unseen clips (W4A4).
        val_last = _objective(q_model, data, target, flows, cfg, held)
        logger.info("held-out objective %.4g -> %.4g at the end", val_start, val_last)
        if val_last <= val_start:
            best_step, val_end = cfg.iters, val_last
            mse_end, ofa_end = score(q_model, data, target, flows, cfg.mask_occlusions)
        else:
            val_end = val_start
    finally:
        with torch.no_grad():
            for p, kept in zip(params, start_params, strict=True):
                if best_step == 0:
                    p.copy_(kept)
                p.requires_grad_(False)
    # Absorption is exact (tests/quant/test_affine.py), so the scores above are the absorbed
    # model's: no second pass over the set.
    layers = absorb_affine(q_model)
    logger.info(
        "%s%s: alpha MSE %.4g -> %.4g, OFA residual %.4g -> %.4g (%d layers, kept step %d "
        "of %d)",
        "GAC" if cfg.affine else "global", "+OFA" if flow_set is not None else "",
        mse_start, mse_end, ofa_start, ofa_end, layers, best_step, cfg.iters,
    )  # fmt: skip
    return GacReport(
        mse_start, mse_end, ofa_start, ofa_end, cfg.iters, best_step, layers,
        val_start, val_end, len(held),
    )  # fmt: skip


def _objective(
    model: nn.Module, data: CalibrationSet, target: Tensor, flows: FlowSet | None,
    cfg: GacConfig, sequences: Tensor,
) -> float:  # fmt: skip
    """MSE + lambda OFA over `sequences`, full length: what the stage keeps or drops on."""
    mse, ofa = score(model, data, target, flows, cfg.mask_occlusions, sequences)
    return mse + cfg.ofa_weight * ofa
