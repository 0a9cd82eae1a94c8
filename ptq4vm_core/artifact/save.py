"""Saving a calibrated model as an artifact directory, atomically.

Everything is written into a temporary directory beside `out` (`.{name}.partial-*`), fsync'd,
then renamed into place; an existing artifact at `out` is first renamed aside
(`.{name}.old-*`) and deleted once the new one is in. An exception cleans the temporary
directory up; a kill may leave it behind, but never a half-written `out`.

Past 400 lines (just): the manifest's assembly and the atomic write of its tensors are one
format; the layout and packing helpers it uses are in their own modules.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import safetensors.torch
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from ptq4vm_core.artifact.errors import ArtifactError
from ptq4vm_core.artifact.layout import (
    ACT_SCALE,
    ACT_ZERO_POINT,
    BIAS,
    MODEL_NAME,
    WEIGHT_Q,
    WEIGHT_SCALE,
    WEIGHT_ZERO_POINT,
    architecture,
    dtype_name,
)
from ptq4vm_core.artifact.manifest import (
    CORE_DIGEST_KEY,
    FORMAT,
    MANIFEST_FILE,
    TENSORS_FILE,
    VERSION,
    ClosureEntry,
    LayerEntry,
    Manifest,
    Provenance,
    SiteEntry,
    TensorEntry,
    check_version_name,
    core_digest,
    default_version_name,
    describe_errors,
    is_artifact_dir,
)
from ptq4vm_core.artifact.packing import encode_weight, storage_for
from ptq4vm_core.assets import RVM_WEIGHTS
from ptq4vm_core.files import fsync_dir, sha256_bytes, write_synced
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.method import Method, Profile
from ptq4vm_core.quant.model import quant_layers
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.site import QuantActivation
from ptq4vm_core.quant.spec import Int8Target, QuantPolicy

logger = logging.getLogger(__name__)


class ClosureLoss(Protocol):
    """One closure's reconstruction loss before and after optimisation."""

    @property
    def name(self) -> str: ...
    @property
    def layers(self) -> int: ...
    @property
    def loss_start(self) -> float: ...
    @property
    def loss_end(self) -> float: ...


class Calibrated(Protocol):
    """What an artifact stores of a calibration: the quantized model and its policy, how it
    was made, what it cost. `ptq4vm_core.calib.calibrate.CalibrationResult` is one; the
    artifact format does not import calibration (it sits below it)."""

    @property
    def model(self) -> nn.Module: ...
    @property
    def policy(self) -> QuantPolicy: ...
    @property
    def method(self) -> Method: ...
    @property
    def bits(self) -> str: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def target(self) -> Int8Target: ...
    @property
    def reports(self) -> Sequence[ClosureLoss]: ...
    @property
    def seconds(self) -> Mapping[str, float]: ...
    @property
    def config(self) -> dict[str, Any]: ...


class CalibrationData(Protocol):
    """The calibration data as the manifest records it (`Provenance`'s fields)."""

    def provenance(self) -> dict[str, object]: ...


_PLACEHOLDER_SHA256 = "0" * 64


def _check_target(out: Path) -> None:
    """`out` may be absent, an empty directory or an artifact (replaced); anything else is
    refused and left alone."""
    if out.is_symlink():
        raise ArtifactError(f"{out}: is a symbolic link; save to the directory it points to")
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; refusing to replace it")
    if any(out.iterdir()) and not is_artifact_dir(out):
        raise ArtifactError(
            f"{out}: exists, is not empty and is not a ptq4vm artifact (no {MANIFEST_FILE} "
            f"of format {FORMAT!r}); refusing to replace it: choose another path"
        )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _layer_tensors(name: str, layer: QuantConv2d, out: Path) -> dict[str, Tensor]:
    """Integer weights, scales, zero points and bias of one layer, on the CPU, copied."""
    if layer.affine is not None:
        raise ArtifactError(
            f"{out}: layer {name!r} carries a GAC correction that was not absorbed; call "
            "ptq4vm_core.quant.model.absorb_affine on the model before saving it"
        )
    policy = layer.policy
    base = layer.weight_quantizer.base
    scale = base.scale.detach().to("cpu", copy=True)
    zero_point = base.zero_point.detach().cpu()
    if scale.dtype != torch.float32 or not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ArtifactError(
            f"{out}: layer {name!r}: weight scales must be finite positive float32, got "
            f"{dtype_name(scale.dtype)} {scale.min().item()}..{scale.max().item()}"
        )
    if not torch.equal(zero_point, zero_point.round()):
        raise ArtifactError(f"{out}: layer {name!r}: weight zero points are not integers")
    try:
        q = encode_weight(layer.integer_weight().cpu(), policy.weight)
    except ValueError as exc:
        raise ArtifactError(f"{out}: layer {name!r}: {exc}") from exc
    tensors = {
        WEIGHT_Q: q,
        WEIGHT_SCALE: scale,
        WEIGHT_ZERO_POINT: zero_point.to(torch.int32),
    }
    if layer.bias is not None:
        tensors[BIAS] = layer.bias.detach().to("cpu", torch.float32, copy=True)
    if layer.act_quantizer is not None:
        tensors.update(_activation_tensors(name, layer.act_quantizer, out))
    return {f"{name}.{k}": v for k, v in tensors.items()}


def _activation_tensors(name: str, act: UniformQuantizer, out: Path) -> dict[str, Tensor]:
    """Scale float32 [1] and zero point int32 [1] of an activation quantizer, copied."""
    scale = act.scale.detach().to("cpu", copy=True)
    zero_point = act.zero_point.detach().cpu()
    if scale.dtype != torch.float32 or not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ArtifactError(
            f"{out}: {name!r}: the activation scale must be finite positive float32, got "
            f"{dtype_name(scale.dtype)} {scale.tolist()}"
        )
    if not torch.equal(zero_point, zero_point.round()):
        raise ArtifactError(f"{out}: {name!r}: the activation zero point is not an integer")
    return {ACT_SCALE: scale, ACT_ZERO_POINT: zero_point.to(torch.int32)}


def _site_tensors(
    model: nn.Module, policy: QuantPolicy, expected: list[str], out: Path
) -> tuple[dict[str, Tensor], dict[str, SiteEntry]]:
    """The quantized activation sites' tensors and table; checked against the policy."""
    sites = {n: m for n, m in model.named_modules() if isinstance(m, QuantActivation)}
    missing = sorted(set(expected) - sites.keys())
    extra = sorted(sites.keys() - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"{out}: the model's activation sites do not follow its policy: not quantized "
            f"{missing}, quantized but kept in float by the policy {extra}"
        )
    tensors: dict[str, Tensor] = {}
    table: dict[str, SiteEntry] = {}
    for name in expected:
        spec = policy.site_spec(name)
        act = sites[name].act_quantizer
        if spec is None or act.spec != spec:
            raise ArtifactError(
                f"{out}: activation site {name!r} is quantized as {act.spec}, the policy says "
                f"{spec}"
            )
        site_tensors = _activation_tensors(name, act, out)
        tensors.update({f"{name}.{k}": v for k, v in site_tensors.items()})
        table[name] = SiteEntry(act_bits=spec.bits)
    return tensors, table


@dataclass(frozen=True)
class Collected:
    """What `collect_tensors` gathers: every tensor to store (CPU copies) and the tables."""

    tensors: dict[str, Tensor]
    layers: dict[str, LayerEntry]
    sites: dict[str, SiteEntry]
    float_tensors: dict[str, TensorEntry]


def collect_tensors(model: nn.Module, policy: QuantPolicy, out: Path) -> Collected:
    """Every tensor to store, with the layer, site and float-tensor tables; `model` is only
    read. Raises ArtifactError when the model's quantized modules do not follow `policy`."""
    arch = architecture(MODEL_NAME)
    expected = arch.quantized(policy)
    layers = quant_layers(model)
    missing = sorted(set(expected) - layers.keys())
    extra = sorted(layers.keys() - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"{out}: the model's quantized layers do not follow its policy: not quantized "
            f"{missing}, quantized but kept in float by the policy {extra}"
        )
    tensors: dict[str, Tensor] = {}
    table: dict[str, LayerEntry] = {}
    for name in expected:
        layer = layers[name]
        layer_policy = policy.for_layer(name)
        if layer_policy is None or layer.policy != layer_policy:
            raise ArtifactError(
                f"{out}: layer {name!r} is quantized as {layer.policy}, the policy says "
                f"{layer_policy}"
            )
        conv = arch.convs[name]
        storage = storage_for(layer_policy.weight)
        input_spec = policy.input_spec(name)
        tensors.update(_layer_tensors(name, layer, out))
        table[name] = LayerEntry(
            weight_bits=layer_policy.weight.bits,
            act_bits=None if input_spec is None else input_spec.bits,
            weight_shape=conv.weight_shape,
            storage=storage,
            packed=storage.packed,
            bias=conv.bias,
        )
    state = model.state_dict()
    floats: dict[str, TensorEntry] = {}
    for key in arch.float_keys(expected):
        if key not in state:
            raise ArtifactError(f"{out}: the model has no tensor {key!r}")
        t = state[key].detach().to("cpu", copy=True).contiguous()
        tensors[key] = t
        floats[key] = TensorEntry(dtype=dtype_name(t.dtype), shape=tuple(t.shape))
    site_tensors, sites = _site_tensors(model, policy, arch.quantized_sites(policy), out)
    tensors.update(site_tensors)
    return Collected(tensors, table, sites, floats)


def _json_dict(value: dict[str, Any], what: str, out: Path) -> dict[str, Any]:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{out}: the calibration {what} is not JSON-able: {exc}") from exc
    return value


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` to `out`; an artifact (or empty directory) already at `out`
    is renamed aside first, restored if the second rename fails, deleted after it."""
    _check_target(out)
    if not out.exists():
        os.rename(tmp, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, aside)  # replaces the empty directory `aside`
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _manifest(
    result: Calibrated,
    data: CalibrationData,
    collected: Collected,
    version_name: str,
    created: datetime,
    out: Path,
) -> Manifest:
    """The manifest, with a placeholder hash for the tensor file (not yet written)."""
    try:
        return Manifest(
            format=FORMAT,
            version=VERSION,
            version_name=version_name,
            created=created,
            model=MODEL_NAME,
            base_weights_sha256=RVM_WEIGHTS.sha256,
            method=result.method,
            bits=result.bits,
            profile=result.profile,
            int8_target=result.target,
            policy=result.policy,
            layers=collected.layers,
            sites=collected.sites,
            float_tensors=collected.float_tensors,
            calibration=Provenance.model_validate(data.provenance()),
            config=_json_dict(result.config, "config", out),
            timings={k: v for k, v in result.seconds.items() if math.isfinite(v)},
            reports=tuple(
                ClosureEntry(
                    name=r.name,
                    layers=r.layers,
                    loss_start=_finite(r.loss_start),
                    loss_end=_finite(r.loss_end),
                )
                for r in result.reports
            ),
            metrics={},
            files={TENSORS_FILE: _PLACEHOLDER_SHA256},
        )
    except ValidationError as exc:
        raise ArtifactError(
            f"{out}: this calibration cannot be described in a manifest: {describe_errors(exc)}"
        ) from exc


def save_artifact(
    result: Calibrated,
    data: CalibrationData,
    out: Path,
    *,
    name: str | None = None,
) -> Path:
    """Writes `result` (calibrated on `data`) as an artifact directory at `out`; returns `out`.

    `name` is the artifact's version name (default ptq4vm-<bits>-<UTC time>, e.g.
    ptq4vm-w8a8-20261126T153000Z). The model is only read. `out` must be absent, an empty
    directory or an older artifact (replaced atomically); anything else raises ArtifactError
    and is left untouched. See the module docstring for what a failure leaves behind.
    """
    started = time.monotonic()
    out = Path(out).absolute()
    _check_target(out)
    if not isinstance(result.model, MattingNetwork):
        raise ArtifactError(
            f"{out}: only {MODEL_NAME} (MattingNetwork) models can be saved, got "
            f"{type(result.model).__name__}"
        )
    created = datetime.now(UTC).replace(microsecond=0)
    version_name = check_version_name(
        default_version_name(result.bits, created) if name is None else name
    )
    collected = collect_tensors(result.model, result.policy, out)
    manifest = _manifest(result, data, collected, version_name, created, out)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        CORE_DIGEST_KEY: core_digest(manifest.model_dump(mode="json")),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the artifact from other users
        payload = safetensors.torch.save(collected.tensors, metadata=metadata)
        write_synced(tmp / TENSORS_FILE, payload)
        manifest = manifest.model_copy(update={"files": {TENSORS_FILE: sha256_bytes(payload)}})
        write_synced(tmp / MANIFEST_FILE, manifest.to_json())
        fsync_dir(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    logger.info(
        "saved artifact %s (%s, %d quantized layers, %d sites, %.1f MB) in %.2f s",
        out,
        version_name,
        len(collected.layers),
        len(collected.sites),
        len(payload) / 1e6,
        time.monotonic() - started,
    )
    return out
