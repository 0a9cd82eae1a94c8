"""Model-agnostic wrapping: swap convs for QuantConv2d, switch modes, observe activations.

Nothing here knows the model's architecture: layers are found by walking `named_modules()`
and named by their qualified module names, which is also how a `QuantPolicy` names them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ptq4vm_core.quant.adaround import AdaRoundQuantizer
from ptq4vm_core.quant.affine import WeightAffine
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.quantizer import UniformQuantizer, check_drop_prob
from ptq4vm_core.quant.site import ActivationSite, QuantActivation
from ptq4vm_core.quant.spec import QuantPolicy

logger = logging.getLogger(__name__)


def quantize_model(model: nn.Module, policy: QuantPolicy, p: float = 2.4) -> nn.Module:
    """A deep copy of `model` whose quantized convs are QuantConv2d; `model` is not modified.

    Every `nn.Conv2d` whose qualified name gets a policy from `policy.for_layer` is replaced
    (weights range-initialised by the Lp-`p` search); all quantizers start in FP mode, so the
    copy computes exactly what `model` does until `set_mode` says otherwise. A conv shared
    under several names is replaced once, everywhere, with the policy of its first name.
    Raises ValueError when the policy names a layer that is not a conv of the model.
    """
    all_names = {
        name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.Conv2d)
    }
    unknown = sorted(policy.named_layers - all_names)
    if unknown:
        raise ValueError(
            f"the policy names layers that are not nn.Conv2d modules of the model: {unknown}; "
            "use qualified names as model.named_modules() gives them"
        )
    qmodel = copy.deepcopy(model)
    replacements: dict[int, nn.Module] = {}
    n_convs = 0
    for name, m in qmodel.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        n_convs += 1
        layer_policy = policy.for_layer(name)
        if layer_policy is not None:
            replacements[id(m)] = QuantConv2d(
                m,
                layer_policy,
                p=p,
                parts=policy.input_parts.get(name),
                output=policy.outputs.get(name),
            )
    n_sites = 0
    for name, m in qmodel.named_modules():
        if isinstance(m, ActivationSite):
            site_policy = policy.for_layer(name)
            if site_policy is not None and site_policy.activation is not None:
                replacements[id(m)] = QuantActivation(site_policy.activation)
                n_sites += 1
    logger.info(
        "quantized %d of %d conv layers and %d activation sites",
        len(replacements) - n_sites, n_convs, n_sites,
    )  # fmt: skip
    if id(qmodel) in replacements:  # the model is itself a single conv
        return replacements[id(qmodel)]
    for parent in list(qmodel.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return qmodel


def quant_layers(model: nn.Module) -> dict[str, QuantConv2d]:
    """Every QuantConv2d of `model` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantConv2d)}


def activation_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantActivation]:
    """Every module of `model` with an activation quantizer (convs and sites, a conv's input
    parts and output site included), by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, QuantActivation) or (isinstance(m, QuantConv2d) and m.act_quantizer)
    }


def _quantizers(model: nn.Module) -> list[UniformQuantizer | AdaRoundQuantizer]:
    return [m for m in model.modules() if isinstance(m, UniformQuantizer | AdaRoundQuantizer)]


def set_mode(model: nn.Module, mode: QuantMode) -> None:
    """Puts every quantizer of `model` (weights and activations) in `mode`."""
    mode = QuantMode(mode)
    for q in _quantizers(model):
        q.mode = mode


@contextmanager
def mode(model: nn.Module, m: QuantMode) -> Iterator[None]:
    """Runs the block with every quantizer in mode `m`, then restores each one's previous mode."""
    saved = [(q, q.mode) for q in _quantizers(model)]
    set_mode(model, m)
    try:
        yield
    finally:
        for q, previous in saved:
            q.mode = previous


def set_drop_prob(model: nn.Module, p: float) -> None:
    """Sets QDrop's `drop_prob` on every activation quantizer (weights are never dropped)."""
    p = check_drop_prob(p)
    for layer in activation_layers(model).values():
        if layer.act_quantizer is not None:
            layer.act_quantizer.drop_prob = p


def attach_affine(model: nn.Module) -> dict[str, WeightAffine]:
    """Gives every QuantConv2d of `model` a fresh GAC correction (gamma 1, beta 0, which leaves
    its output unchanged) and returns them by layer name. Replaces any correction present."""
    out = {}
    for name, layer in quant_layers(model).items():
        layer.affine = WeightAffine(layer.weight_quantizer.base)
        out[name] = layer.affine
    return out


def absorb_affine(model: nn.Module) -> int:
    """Folds every attached GAC correction into its layer's integer weights and scales and
    detaches it; the quantized modes compute bit for bit what they did before. Returns how
    many layers changed."""
    count = 0
    for layer in quant_layers(model).values():
        if layer.affine is None:
            continue
        grid = layer.weight_quantizer.base
        q = layer.weight_quantizer.hard_integer(layer.weight).to(layer.weight.dtype)
        integers, scale = layer.affine.absorbed(q, grid)
        layer.set_integer_weight(integers, scale)
        layer.affine = None
        count += 1
    return count


class _Sample:
    """A random sample of at most `size` streamed values, weighted by how many each call saw.

    Each call contributes at most `size` values drawn uniformly from it; each drawn value stands
    for numel / drawn values of its call, and a weighted reservoir (Efraimidis-Spirakis keys
    u^(1/w), largest kept) merges the calls, so a big call weighs more than a small one without
    ever sorting a whole activation map. The exact minimum and maximum are tracked besides, so
    no range search misses the extremes.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator
        self.values: Tensor | None = None
        self.keys: Tensor | None = None
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.calls = 0
        self.seen = 0

    def add(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        n = flat.numel()
        if n == 0:
            return
        if self.values is not None:
            flat = flat.to(self.values.device)
        drawn = min(n, self.size)
        if drawn < n:
            idx = torch.randint(n, (drawn,), generator=self.generator).to(flat.device)
            kept = flat[idx]
        else:
            kept = flat.clone()
        keys = torch.rand(drawn, generator=self.generator).pow(drawn / n).to(flat.device)
        lo, hi = flat.min().reshape(1), flat.max().reshape(1)
        if self.values is None or self.keys is None or self.lo is None or self.hi is None:
            self.values, self.keys, self.lo, self.hi = kept, keys, lo, hi
        else:
            values = torch.cat([self.values, kept])
            keys = torch.cat([self.keys, keys])
            if values.numel() > self.size:
                keys, idx = torch.topk(keys, self.size, largest=True)
                values = values[idx]
            self.values, self.keys = values, keys
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.calls += 1
        self.seen += n

    def data(self) -> Tensor:
        """The sample plus the exact min and max: 1-D float32."""
        if self.values is None or self.lo is None or self.hi is None:
            raise ValueError("no data was captured")
        return torch.cat([self.values, self.lo, self.hi])


class ActivationObserver:
    """Captures the inputs of activation quantizers while the model runs in float.

        with ActivationObserver(qmodel) as obs:
            for batch in calibration_data:
                qmodel(batch)
        obs.init_ranges(p=2.4)

    Inside the block every quantizer is in FP mode (restored on exit) and each observed
    layer's act quantizer keeps a uniform random sample of at most `max_elements` of its
    inputs, over every call (a module called several times per forward is sampled across all
    calls), plus the exact min and max. `names` selects layers (qualified names; default:
    every QuantConv2d with an activation quantizer).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str] | None = None,
        max_elements: int = 1 << 18,
        seed: int = 0,
    ) -> None:
        if max_elements < 1:
            raise ValueError(f"max_elements={max_elements} must be >= 1")
        layers = activation_layers(model)
        if names is None:
            selected = [n for n, layer in layers.items() if layer.act_quantizer is not None]
        else:
            selected = list(names)
            convs = quant_layers(model)
            no_act = [n for n in selected if n in convs and convs[n].act_quantizer is None]
            if no_act:
                raise ValueError(
                    f"layers {no_act} keep float activations (policy activation=None): "
                    "leave them out of names"
                )
            unknown = [n for n in selected if n not in layers]
            if unknown:
                raise ValueError(
                    f"not quantized layers of the model: {unknown}; see activation_layers(model)"
                )
        self._model = model
        self._quantizers: dict[str, UniformQuantizer] = {}
        for n in selected:
            act = layers[n].act_quantizer
            if act is not None:
                self._quantizers[n] = act
        generator = torch.Generator().manual_seed(seed)
        self._samples = {n: _Sample(max_elements, generator) for n in self._quantizers}
        self._stack: ExitStack | None = None

    @property
    def names(self) -> list[str]:
        """The observed layers."""
        return list(self._quantizers)

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        sample = self._samples[name]

        def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
            sample.add(args[0])

        return capture

    def __enter__(self) -> ActivationObserver:
        if self._stack is not None:
            raise RuntimeError("this ActivationObserver is already active; it is not reentrant")
        stack = ExitStack()
        try:
            stack.enter_context(mode(self._model, QuantMode.FP))
            for name, act in self._quantizers.items():
                stack.callback(act.register_forward_pre_hook(self._hook(name)).remove)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def captured(self, name: str) -> Tensor:
        """Layer `name`'s sample (with the exact min and max appended): 1-D float32."""
        if name not in self._samples:
            raise ValueError(f"layer {name!r} is not observed; observed: {self.names}")
        return self._samples[name].data()

    def calls(self, name: str) -> int:
        """How many times layer `name`'s activation quantizer ran while observed."""
        if name not in self._samples:
            raise ValueError(f"layer {name!r} is not observed; observed: {self.names}")
        return self._samples[name].calls

    def init_ranges(self, p: float = 2.4, grid: int = 100) -> list[str]:
        """Range-initialises every observed act quantizer that saw data; returns their names.

        A layer that never ran keeps its placeholder range and is logged as a warning.
        """
        done = []
        for name, act in self._quantizers.items():
            sample = self._samples[name]
            if sample.calls == 0:
                logger.warning("layer %s never ran while observed: its range stays unset", name)
                continue
            act.init_range(sample.data(), p=p, grid=grid)
            done.append(name)
            logger.debug("%s: %d calls, %d values observed", name, sample.calls, sample.seen)
        return done
