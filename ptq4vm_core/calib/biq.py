"""BIQ: block-wise initial quantization, one functional closure at a time.

For closure k, in topological order: the FP branch runs the FP model's closure on FP inputs,
the quantized branch runs the quantized closure on the outputs of the already-quantized
closures before it; both over the same calibration sequences, each carrying its own recurrent
state. The quantized closure then learns its weight rounding (AdaRound) and its activation step
sizes (LSQ) to minimise the MSE between its outputs and the FP outputs, frame after frame with
its own previous output as its recurrent input. With `drop_prob` > 0 this is QDrop, else BRECQ.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ptq4vm_core.calib.closure_data import SeqEnv, frame_inputs, needed_after, run_over_set
from ptq4vm_core.calib.methods import ReconstructionConfig
from ptq4vm_core.calib.progress import ProgressTracker
from ptq4vm_core.closure import Closure
from ptq4vm_core.quant.adaround import TemperatureDecay
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import ActivationObserver, activation_layers
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.site import QuantActivation

logger = logging.getLogger(__name__)

OBSERVE_SEQUENCES = 4  # sequences whose activations initialise the step sizes


@dataclass(frozen=True)
class ClosureReport:
    """Reconstruction loss of a closure's outputs in QUANTIZED mode over the whole set, before
    (nearest rounding, initial step sizes) and after optimisation."""

    name: str
    layers: int
    loss_start: float
    loss_end: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "layers": self.layers, "loss_start": self.loss_start,
                "loss_end": self.loss_end}  # fmt: skip


def closure_layers(closure: Closure) -> list[QuantConv2d | QuantActivation]:
    """The closure's quantized convolutions and activation sites, in registration order."""
    return [m for m in closure.modules() if isinstance(m, QuantConv2d | QuantActivation)]


def set_layers_mode(
    layers: list[QuantConv2d | QuantActivation], mode: QuantMode, drop_prob: float = 0.0
) -> None:
    for layer in layers:
        if isinstance(layer, QuantConv2d):
            layer.weight_quantizer.mode = mode
        if layer.act_quantizer is not None:
            layer.act_quantizer.mode = mode
            layer.act_quantizer.drop_prob = drop_prob if mode is QuantMode.CALIBRATING else 0.0


def reconstruction_loss(out: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    """Sum over outputs of the squared error summed over channels, averaged elsewhere
    (BRECQ's lp_loss with p = 2)."""
    total = torch.zeros(())
    for key, value in out.items():
        total = total + (value - target[key]).pow(2).sum(1).mean()
    return total


def set_loss(out: SeqEnv, target: SeqEnv) -> float:
    """reconstruction_loss over a whole set [N,T,...] (channels are dim 2 there)."""
    return float(sum(float((out[k] - target[k]).pow(2).sum(2).mean()) for k in out))


def init_activation_ranges(
    q_model: nn.Module, closure: Closure, env: SeqEnv, layers: list[QuantConv2d | QuantActivation],
    p: float,
    grid: int,
) -> None:  # fmt: skip
    """Step sizes of the closure's input quantizers from the activations the quantized branch
    produces (the closure itself still in FP), by the Lp search."""
    names = {id(m): n for n, m in activation_layers(q_model).items()}
    wanted = [names[id(layer)] for layer in layers if id(layer) in names]
    if not wanted:
        return
    sample = {k: v[:OBSERVE_SEQUENCES] for k, v in env.items()}
    with ActivationObserver(q_model, names=wanted) as observer:
        run_over_set(closure, sample)
    observer.init_ranges(p=p, grid=grid)


def _trainables(
    layers: list[QuantConv2d | QuantActivation],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    rounding = [layer.weight_quantizer.alpha for layer in layers if isinstance(layer, QuantConv2d)]
    scales = [layer.act_quantizer.scale for layer in layers if layer.act_quantizer is not None]
    return rounding, scales


def optimise_closure(
    closure: Closure,
    layers: list[QuantConv2d | QuantActivation],
    q_env: SeqEnv,
    fp_out: SeqEnv,
    cfg: ReconstructionConfig,
    generator: torch.Generator,
    tracker: ProgressTracker | None,
) -> tuple[float, float]:
    """Learn rounding and step sizes of `closure`; returns (first, last) training losses."""
    rounding, scales = _trainables(layers)
    for param in (*rounding, *scales):
        param.requires_grad_(True)
    opt_round = torch.optim.Adam(rounding, lr=cfg.lr_round)
    opt_act = torch.optim.Adam(scales, lr=cfg.lr_act) if scales else None
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt_act, T_max=cfg.iters, eta_min=0.0)
        if opt_act is not None
        else None
    )
    decay = TemperatureDecay(cfg.iters, warmup=cfg.warmup)
    n, t_len = next(iter(q_env.values())).shape[:2]
    first = last = math.nan
    set_layers_mode(layers, QuantMode.CALIBRATING, cfg.drop_prob)
    try:
        for step in range(cfg.iters):
            idx = torch.randperm(n, generator=generator)[: cfg.batch]
            state: dict[str, Tensor | None] = {}
            rec = torch.zeros(())
            for t in range(t_len):
                out = closure.run(frame_inputs(closure, q_env, idx, t, state))
                rec = rec + reconstruction_loss(out, {k: fp_out[k][idx, t] for k in out})
                state = {key: out[key] for key in closure.recurrent}
            rec = rec / t_len
            b = decay(step)
            reg = (
                cfg.round_weight
                * sum(
                    layer.weight_quantizer.regularizer(b)
                    for layer in layers
                    if isinstance(layer, QuantConv2d)
                )
                if b is not None
                else torch.zeros(())
            )
            loss = rec + reg
            opt_round.zero_grad(set_to_none=True)
            if opt_act is not None:
                opt_act.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt_round.step()
            if opt_act is not None and sched is not None:
                opt_act.step()
                sched.step()
                for scale in scales:  # a step size must stay positive
                    scale.data.clamp_(min=1e-8)
            last = float(rec.detach())
            if step == 0:
                first = last
            if tracker is not None and (step % 10 == 9 or step == cfg.iters - 1):
                tracker.update("biq", closure.name, step + 1, cfg.iters, advance=0.0, loss=last)
    finally:
        for param in (*rounding, *scales):
            param.requires_grad_(False)
    return first, last


def block_reconstruction(
    fp_closures: list[Closure],
    q_model: nn.Module,
    q_closures: list[Closure],
    start_env: SeqEnv,
    cfg: ReconstructionConfig | None,
    *,
    keep: tuple[str, ...] = (),
    p: float = 2.4,
    grid: int = 100,
    tracker: ProgressTracker | None = None,
) -> tuple[SeqEnv, list[ClosureReport]]:
    """Calibrate `q_closures` in order; cfg None = no optimisation (ranges only, MinMax-style).

    `start_env` holds the model inputs [N,T,...] shared by both branches. Returns the quantized
    branch's environment (only the keys in `keep` survive) and a report per closure. All
    quantized layers end in QuantMode.QUANTIZED.
    """
    generator = torch.Generator().manual_seed(cfg.seed if cfg else 0)
    fp_env: SeqEnv = dict(start_env)
    q_env: SeqEnv = dict(start_env)
    reports: list[ClosureReport] = []
    for index, (fp_c, q_c) in enumerate(zip(fp_closures, q_closures, strict=True)):
        if fp_c.name != q_c.name:
            raise ValueError(f"closure order differs: {fp_c.name} vs {q_c.name}")
        fp_out = run_over_set(fp_c, fp_env)
        layers = closure_layers(q_c)
        init_activation_ranges(q_model, q_c, q_env, layers, p, grid)
        set_layers_mode(layers, QuantMode.QUANTIZED)
        first = set_loss(run_over_set(q_c, q_env), fp_out)
        if cfg is not None and cfg.iters > 0 and layers:
            with torch.enable_grad():
                optimise_closure(q_c, layers, q_env, fp_out, cfg, generator, tracker)
            set_layers_mode(layers, QuantMode.QUANTIZED)
        q_out = run_over_set(q_c, q_env)
        last = set_loss(q_out, fp_out)
        reports.append(ClosureReport(q_c.name, len(layers), first, last))
        logger.info("BIQ %-8s %2d layers  loss %.4g -> %.4g", q_c.name, len(layers), first, last)
        fp_env.update(fp_out)
        q_env.update(q_out)
        needed = needed_after(q_closures, index, keep)
        for env in (fp_env, q_env):
            for key in [k for k in env if k not in needed]:
                del env[key]
        if tracker is not None:
            tracker.update("biq", q_c.name, 1, 1, advance=1.0, loss=last)
    return q_env, reports
