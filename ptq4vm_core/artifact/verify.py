"""Checking an artifact without building its model: hashes, tensor set, dtypes, shapes, ranges."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from ptq4vm_core.artifact.errors import ArtifactError
from ptq4vm_core.artifact.layout import (
    ACT_SCALE,
    ACT_ZERO_POINT,
    BIAS,
    WEIGHT_Q,
    WEIGHT_SCALE,
    WEIGHT_ZERO_POINT,
    Architecture,
    architecture,
    dtype_name,
    known_models,
    layer_tensor_names,
    site_tensor_names,
)
from ptq4vm_core.artifact.manifest import (
    CORE_DIGEST_KEY,
    MANIFEST_FILE,
    TENSORS_FILE,
    Manifest,
    core_digest,
    read_manifest,
)
from ptq4vm_core.artifact.packing import decode_weight
from ptq4vm_core.files import sha256_bytes
from ptq4vm_core.quant.spec import QuantSpec

logger = logging.getLogger(__name__)

_SHOWN = 8  # names listed in an error before "and N more"


@dataclass(frozen=True)
class Verified:
    """A verified artifact: where it is, its manifest, every tensor as stored, and per quantized
    layer the unpacked integer weights, int32 [C_out, C_in/groups, kH, kW]. Verify once and
    hand this value on: the export, the saturation check and the engines take it."""

    path: Path
    manifest: Manifest
    tensors: dict[str, Tensor]
    integers: dict[str, Tensor]


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - _SHOWN} more" if len(ordered) > _SHOWN else ""
    return f"{ordered[:_SHOWN]}{more}"


def _read_files(path: Path, manifest: Manifest) -> dict[str, bytes]:
    """Every listed file's bytes, each checked against its sha256 (hashing the very bytes that
    are parsed later, so the file cannot change between check and use)."""
    listed_in = path / MANIFEST_FILE
    payloads = {}
    for name, expected in manifest.files.items():
        file = path / name
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{file}: missing (listed in {listed_in})") from None
        except OSError as exc:
            raise ArtifactError(f"{file}: cannot be read: {exc}") from exc
        actual = sha256_bytes(data)
        if actual != expected:
            raise ArtifactError(
                f"{file}: sha256 mismatch: {MANIFEST_FILE} lists {expected}, the file has "
                f"{actual}; the file was modified or corrupted"
            )
        payloads[name] = data
    return payloads


def _metadata(data: bytes, file: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (u64 little-endian length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        meta = header.get("__metadata__", {})
    except (struct.error, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{file}: not a safetensors file (bad header: {exc})") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{file}: safetensors metadata is not an object")
    return {str(k): str(v) for k, v in meta.items()}


def _load_tensors(data: bytes, file: Path) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # the parser raises its own (Rust-side) error types
        raise ArtifactError(f"{file}: not a readable safetensors file: {exc}") from exc


def _same_keys(file: Path, what: str, expected: Iterable[str], table: Mapping[str, Any]) -> None:
    """ArtifactError saying `what` unless `table` has exactly the `expected` keys."""
    missing = set(expected) - table.keys()
    extra = table.keys() - set(expected)
    if missing or extra:
        raise ArtifactError(
            f"{file}: {what}: missing {_names(missing)}, unexpected {_names(extra)}"
        )


def _check_structure(manifest: Manifest, arch: Architecture, file: Path) -> None:
    """The layer table against the model's convs and the policy; float tensors against the
    model's remaining state."""
    policy = manifest.policy
    unknown = policy.named_layers - arch.convs.keys()
    if unknown:
        raise ArtifactError(
            f"{file}: the policy names layers that are not convs of {manifest.model}: "
            f"{_names(unknown)}"
        )
    expected = arch.quantized(policy)
    _same_keys(file, "the layer table does not match the policy", expected, manifest.layers)
    for name, entry in manifest.layers.items():
        conv = arch.convs[name]
        if entry.weight_shape != conv.weight_shape or entry.bias != conv.bias:
            raise ArtifactError(
                f"{file}: layer {name!r} has weight {list(entry.weight_shape)}, "
                f"bias={entry.bias}; {manifest.model} has {list(conv.weight_shape)}, "
                f"bias={conv.bias}"
            )
        layer = policy.for_layer(name)
        if layer is not None and layer.activation is not None and layer.activation.per_channel:
            raise ArtifactError(
                f"{file}: layer {name!r}: per-channel activation quantization is not supported"
            )
    what = "the activation-site table does not match the policy"
    _same_keys(file, what, arch.quantized_sites(policy), manifest.sites)
    what = "the float tensors do not match the layers the policy keeps in float"
    _same_keys(file, what, arch.float_keys(expected), manifest.float_tensors)
    for key, tensor_entry in manifest.float_tensors.items():
        shape, dtype = arch.state[key]
        if tensor_entry.shape != shape or tensor_entry.dtype != dtype_name(dtype):
            raise ArtifactError(
                f"{file}: float tensor {key!r} is {tensor_entry.dtype} "
                f"{list(tensor_entry.shape)}; {manifest.model} has {dtype_name(dtype)} "
                f"{list(shape)}"
            )


def _check_tensor_set(manifest: Manifest, tensors: dict[str, Tensor], file: Path) -> None:
    expected: set[str] = set(manifest.float_tensors)
    for name, entry in manifest.layers.items():
        act = entry.act_bits is not None
        expected.update(layer_tensor_names(name, bias=entry.bias, act=act))
    for name in manifest.sites:
        expected.update(site_tensor_names(name))
    missing = expected - tensors.keys()
    extra = tensors.keys() - expected
    if missing or extra:
        raise ArtifactError(
            f"{file}: tensors do not match the manifest's layers: missing {_names(missing)}, "
            f"unexpected {_names(extra)}"
        )


def _expect(t: Tensor, dtype: torch.dtype, shape: tuple[int, ...], what: str) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(
            f"{what} must be {dtype_name(dtype)} {list(shape)}, "
            f"got {dtype_name(t.dtype)} {list(t.shape)}"
        )


def _check_grid(t: Tensor, spec: QuantSpec, what: str) -> None:
    lo, hi = int(t.min()), int(t.max())
    if lo < spec.qmin or hi > spec.qmax:
        raise ValueError(
            f"{what} has values {lo}..{hi} outside the {spec.bits}-bit grid "
            f"[{spec.qmin}, {spec.qmax}]"
        )


def _check_scale(t: Tensor, what: str) -> None:
    if not (torch.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"{what} must be finite and > 0, got {t.min().item()}..{t.max().item()}")


def _check_layer(name: str, manifest: Manifest, tensors: dict[str, Tensor]) -> Tensor:
    """Checks one quantized layer's tensors; returns its int32 integer weights."""
    entry = manifest.layers[name]
    layer = manifest.policy.for_layer(name)
    if layer is None:  # excluded by the manifest's own validation
        raise ValueError("the policy keeps this layer in float")
    spec = layer.weight
    q = decode_weight(tensors[f"{name}.{WEIGHT_Q}"], entry.storage, entry.weight_shape)
    _check_grid(q, spec, WEIGHT_Q)
    c_out = entry.weight_shape[0]
    qshape = (c_out,) if spec.per_channel else (1,)
    scale, zp = tensors[f"{name}.{WEIGHT_SCALE}"], tensors[f"{name}.{WEIGHT_ZERO_POINT}"]
    _expect(scale, torch.float32, qshape, WEIGHT_SCALE)
    _expect(zp, torch.int32, qshape, WEIGHT_ZERO_POINT)
    _check_scale(scale, WEIGHT_SCALE)
    _check_grid(zp, spec, WEIGHT_ZERO_POINT)
    if entry.bias:
        bias = tensors[f"{name}.{BIAS}"]
        _expect(bias, torch.float32, (c_out,), BIAS)
        if not torch.isfinite(bias).all():
            raise ValueError(f"{BIAS} has NaN or inf values")
    input_spec = manifest.policy.input_spec(name)
    if input_spec is not None:
        _check_activation(name, input_spec, tensors)
    return q


def _check_activation(name: str, spec: QuantSpec, tensors: dict[str, Tensor]) -> None:
    a_scale, a_zp = tensors[f"{name}.{ACT_SCALE}"], tensors[f"{name}.{ACT_ZERO_POINT}"]
    _expect(a_scale, torch.float32, (1,), ACT_SCALE)
    _expect(a_zp, torch.int32, (1,), ACT_ZERO_POINT)
    _check_scale(a_scale, ACT_SCALE)
    _check_grid(a_zp, spec, ACT_ZERO_POINT)


def _check_values(manifest: Manifest, tensors: dict[str, Tensor], file: Path) -> dict[str, Tensor]:
    integers = {}
    for name in manifest.layers:
        try:
            integers[name] = _check_layer(name, manifest, tensors)
        except ValueError as exc:
            raise ArtifactError(f"{file}: layer {name!r}: {exc}") from exc
    for name in manifest.sites:
        spec = manifest.policy.site_spec(name)
        try:
            if spec is None:  # excluded by the manifest's validation
                raise ValueError("the policy keeps this site in float")
            _check_activation(name, spec, tensors)
        except ValueError as exc:
            raise ArtifactError(f"{file}: activation site {name!r}: {exc}") from exc
    for key, entry in manifest.float_tensors.items():
        t = tensors[key]
        if dtype_name(t.dtype) != entry.dtype or tuple(t.shape) != entry.shape:
            raise ArtifactError(
                f"{file}: float tensor {key!r} is {dtype_name(t.dtype)} {list(t.shape)}, the "
                f"manifest says {entry.dtype} {list(entry.shape)}"
            )
    return integers


def _check_digest(manifest: Manifest, metadata: dict[str, Any], path: Path) -> None:
    recorded = metadata.get(CORE_DIGEST_KEY)
    actual = core_digest(manifest.raw)
    if recorded != actual:
        raise ArtifactError(
            f"{path / MANIFEST_FILE}: does not match {TENSORS_FILE}: fields other than "
            f"'metrics' and 'files' were edited after saving (core sha256 {actual}, the tensor "
            f"file records {recorded})"
        )


def verify(path: Path) -> Verified:
    """Reads and checks everything `load_artifact` relies on; ArtifactError names the file."""
    path = Path(path)
    manifest = read_manifest(path)
    manifest_file = path / MANIFEST_FILE
    if manifest.model not in known_models():
        raise ArtifactError(
            f"{manifest_file}: unknown model {manifest.model!r}; this build knows {known_models()}"
        )
    payloads = _read_files(path, manifest)
    tensor_file = path / TENSORS_FILE
    data = payloads[TENSORS_FILE]
    metadata = _metadata(data, tensor_file)
    tensors = _load_tensors(data, tensor_file)
    _check_structure(manifest, architecture(manifest.model), manifest_file)
    _check_tensor_set(manifest, tensors, tensor_file)
    integers = _check_values(manifest, tensors, tensor_file)
    _check_digest(manifest, metadata, path)
    return Verified(path, manifest, tensors, integers)


def verify_artifact(path: Path) -> Manifest:
    """Checks an artifact without building its model: manifest, format version, file hashes,
    tensor set against the policy and the model's convs, dtypes, shapes and integer ranges.

    Returns the manifest; raises ArtifactError naming the file and the reason.
    """
    manifest = verify(path).manifest
    logger.debug("verified artifact %s (%s)", path, manifest.version_name)
    return manifest
