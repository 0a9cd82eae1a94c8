"""Loading an artifact: verify it, then rebuild the quantized model from integers and scales."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ptq4vm_core.artifact.errors import ArtifactError
from ptq4vm_core.artifact.layout import (
    ACT_SCALE,
    ACT_ZERO_POINT,
    BIAS,
    MODELS,
    WEIGHT_SCALE,
    WEIGHT_ZERO_POINT,
)
from ptq4vm_core.artifact.manifest import TENSORS_FILE, Manifest
from ptq4vm_core.artifact.verify import Verified, verify
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.adaround import ROUND_DOWN_ALPHA
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import quant_layers, quantize_model, set_mode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact. `model`: the quantized network, every quantizer in QUANTIZED mode,
    eval mode, no gradients; `manifest`: the validated manifest (`manifest.raw` the JSON
    object); `path`: the artifact directory."""

    model: MattingNetwork
    manifest: Manifest
    path: Path


def _skeleton(model_name: str, quantized: set[str]) -> nn.Module:
    """The model with a [C_out,1,1,1] stand-in weight in every conv to be quantized.

    `QuantConv2d.__init__` range-initialises its weight quantizer with an Lp search over the
    whole weight (about 20 s for RVM on two CPU cores) whose result the artifact overwrites
    anyway; on the stand-ins the search is instant. `_resize_weights` then gives each layer
    tensors of the true shape, which `load_state_dict` fills.
    """
    net = MODELS[model_name]()
    for name, module in net.named_modules():
        if name in quantized and isinstance(module, nn.Conv2d):
            stand_in = torch.zeros(module.out_channels, 1, 1, 1)
            module.weight = nn.Parameter(stand_in, requires_grad=False)
    return net


def _resize_weights(model: nn.Module, manifest: Manifest) -> None:
    for name, layer in quant_layers(model).items():
        shape = manifest.layers[name].weight_shape
        layer.weight = torch.empty(shape)
        layer.weight_quantizer.alpha = nn.Parameter(torch.empty(shape), requires_grad=False)


def _layer_state(name: str, verified: Verified) -> dict[str, Tensor]:
    """The QuantConv2d state dict entries of layer `name` (keys prefixed with `name.`).

    The artifact has integers q, scales s and zero points z, not the float weight w. In
    QUANTIZED mode the layer computes (clamp(floor(w/s) + round_up + z) - z) * s, so storing
    w = (q - z + 0.5) * s (mid-bin: floor(w/s) = q - z with half a step of margin against
    float rounding) and alpha = ROUND_DOWN_ALPHA (round_up = 0) makes it compute exactly
    (q - z) * s, bit for bit what the calibrated model computed. The float weight itself is
    not recovered: in FP mode a loaded layer uses these mid-bin weights.
    """
    entry = verified.manifest.layers[name]
    t = verified.tensors
    q = verified.integers[name]
    scale = t[f"{name}.{WEIGHT_SCALE}"]
    zero_point = t[f"{name}.{WEIGHT_ZERO_POINT}"].to(torch.float32)
    view = (-1,) + (1,) * (q.dim() - 1)
    w = (q.to(torch.float32) - zero_point.view(view) + 0.5) * scale.view(view)
    state = {
        "weight": w,
        "weight_quantizer.alpha": torch.full(entry.weight_shape, ROUND_DOWN_ALPHA),
        "weight_quantizer.base.scale": scale,
        "weight_quantizer.base.zero_point": zero_point,
    }
    if entry.bias:
        state["bias"] = t[f"{name}.{BIAS}"]
    if entry.act_bits is not None:
        state["act_quantizer.scale"] = t[f"{name}.{ACT_SCALE}"]
        state["act_quantizer.zero_point"] = t[f"{name}.{ACT_ZERO_POINT}"].to(torch.float32)
    return {f"{name}.{k}": v for k, v in state.items()}


def build_model(verified: Verified, path: Path) -> nn.Module:
    """The quantized model of a verified artifact, on the CPU, all quantizers QUANTIZED."""
    manifest = verified.manifest
    file = path / TENSORS_FILE
    try:
        model = quantize_model(_skeleton(manifest.model, set(manifest.layers)), manifest.policy)
    except ValueError as exc:
        raise ArtifactError(f"{path}: the stored policy cannot be applied: {exc}") from exc
    _resize_weights(model, manifest)
    state = {k: verified.tensors[k] for k in manifest.float_tensors}
    for name in manifest.layers:
        state.update(_layer_state(name, verified))
    for name in manifest.sites:
        state[f"{name}.act_quantizer.scale"] = verified.tensors[f"{name}.{ACT_SCALE}"]
        zero_point = verified.tensors[f"{name}.{ACT_ZERO_POINT}"]
        state[f"{name}.act_quantizer.zero_point"] = zero_point.to(torch.float32)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{file}: tensors do not fit {manifest.model}: {exc}") from exc
    for name, layer in quant_layers(model).items():
        if not torch.equal(layer.integer_weight(), verified.integers[name]):
            raise ArtifactError(  # the mid-bin construction failed: a bug, not a bad file
                f"{file}: layer {name!r}: the rebuilt layer does not reproduce the stored "
                "integer weights"
            )
    set_mode(model, QuantMode.QUANTIZED)
    return model.eval().requires_grad_(False)


def load_artifact(path: Path, *, device: str = "cpu") -> Artifact:
    """Verifies the artifact at `path` (see `verify_artifact`) and builds its model on `device`.

    The model's QUANTIZED-mode outputs are bit-identical to those of the model that was
    saved (on the same device). Raises ArtifactError naming the file and the reason.
    """
    started = time.monotonic()
    path = Path(path)
    verified = verify(path)
    model = build_model(verified, path)
    if not isinstance(model, MattingNetwork):
        raise ArtifactError(f"{path}: model {verified.manifest.model!r} is not a MattingNetwork")
    model = model.to(torch.device(device))
    logger.info(
        "loaded artifact %s (%s, %s %s) in %.2f s",
        path,
        verified.manifest.version_name,
        verified.manifest.method.value,
        verified.manifest.bits,
        time.monotonic() - started,
    )
    return Artifact(model=model, manifest=verified.manifest, path=path)
