"""The artifact manifest: what was quantized, how, from what, and the hashes of its files.

`manifest.json` is written once by `save_artifact`; afterwards only `metrics` may change
(through `update_metrics`). Everything else is bound to the tensor file: its safetensors
metadata carries the sha256 of the manifest without `metrics` and `files`
(`core_digest`), and `files` carries the tensor file's sha256, so an edit anywhere else in the
manifest, or in the tensors, is detected on load.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from ptq4vm_core.artifact.errors import ArtifactError
from ptq4vm_core.artifact.packing import Storage, storage_for
from ptq4vm_core.files import replace_file
from ptq4vm_core.quant.method import Method, Profile
from ptq4vm_core.quant.spec import Int8Target, QuantPolicy, parse_bits

logger = logging.getLogger(__name__)

FORMAT: Literal["ptq4vm-artifact"] = "ptq4vm-artifact"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "tensors.safetensors"
CORE_DIGEST_KEY = "ptq4vm.manifest_core_sha256"  # safetensors metadata key
MUTABLE_FIELDS = frozenset({"metrics", "files"})
VERSION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_STRICT = ConfigDict(extra="forbid", frozen=True)


def _parse_policy(value: object) -> QuantPolicy:
    if isinstance(value, QuantPolicy):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"policy must be an object, got {type(value).__name__}")
    return QuantPolicy.from_dict(value)


PolicyField = Annotated[
    QuantPolicy,
    PlainValidator(_parse_policy),
    PlainSerializer(lambda p: p.to_dict(), return_type=dict),
]


class LayerEntry(BaseModel):
    """One quantized layer: its bits (from the policy), unpacked weight shape
    [C_out, C_in/groups, kH, kW], how the integers are stored, whether it has a bias."""

    model_config = _STRICT

    weight_bits: int
    act_bits: int | None
    weight_shape: tuple[int, ...]
    storage: Storage
    packed: bool
    bias: bool

    @model_validator(mode="after")
    def _packed_matches_storage(self) -> LayerEntry:
        if self.packed != self.storage.packed:
            raise ValueError(f"packed={self.packed} contradicts storage {self.storage.value}")
        return self


class SiteEntry(BaseModel):
    """One quantized activation site (a tensor quantized where it feeds no conv directly)."""

    model_config = _STRICT

    act_bits: int


class TensorEntry(BaseModel):
    """A tensor stored as-is (a layer kept in float): dtype name (e.g. "float32") and shape."""

    model_config = _STRICT

    dtype: str
    shape: tuple[int, ...]


class ClipProvenance(BaseModel):
    model_config = _STRICT

    path: str
    sha256: _SHA256
    ground_truth: bool


class Provenance(BaseModel):
    """The calibration data: clips with their hashes, sequences x seq_len frames of size
    [W, H], and the augmentation seed."""

    model_config = _STRICT

    clips: tuple[ClipProvenance, ...]
    sequences: int
    seq_len: int
    size: tuple[int, int]
    seed: int


class ClosureEntry(BaseModel):
    """A closure's reconstruction loss before and after (None where it was not finite)."""

    model_config = _STRICT

    name: str
    layers: int
    loss_start: float | None
    loss_end: float | None


class Manifest(BaseModel):
    """The parsed, validated `manifest.json`; `raw` is the JSON object as read."""

    model_config = _STRICT

    format: Literal["ptq4vm-artifact"]
    version: int
    version_name: Annotated[str, Field(pattern=VERSION_NAME_PATTERN)]
    created: AwareDatetime
    model: str
    base_weights_sha256: _SHA256
    method: Method
    bits: str
    profile: Profile
    # The int8 kernels the model was calibrated for (`--int8-target`); an artifact written
    # before targets existed was calibrated for exact (VNNI) kernels. A label only: whether
    # its integers are safe on kernels without VNNI is computed (`artifact.saturation`).
    int8_target: Int8Target = Int8Target.VNNI
    policy: PolicyField
    layers: dict[str, LayerEntry]
    sites: dict[str, SiteEntry]
    float_tensors: dict[str, TensorEntry]
    calibration: Provenance
    config: dict[str, Any]
    timings: dict[str, float]
    reports: tuple[ClosureEntry, ...]
    metrics: dict[str, Any]
    files: dict[str, _SHA256]

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object this manifest was read from (empty for one built in memory)."""
        return self._raw

    @field_serializer("created")
    def _utc_iso(self, created: datetime) -> str:
        return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @field_validator("bits")
    @classmethod
    def _known_bits(cls, bits: str) -> str:
        parse_bits(bits)
        return bits

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if name in ("", ".", "..", MANIFEST_FILE) or "/" in name or "\\" in name:
                raise ValueError(f"files may only list plain file names, not {name!r}")
        if TENSORS_FILE not in files:
            raise ValueError(f"files must list {TENSORS_FILE}")
        return files

    @model_validator(mode="after")
    def _layers_follow_policy(self) -> Manifest:
        for name, entry in self.layers.items():
            layer = self.policy.for_layer(name)
            if layer is None:
                raise ValueError(f"layer {name!r} is in the table but the policy keeps it in float")
            input_spec = self.policy.input_spec(name)
            act_bits = None if input_spec is None else input_spec.bits
            table = (entry.weight_bits, entry.act_bits, entry.storage)
            policy = (layer.weight.bits, act_bits, storage_for(layer.weight))
            if table != policy:
                raise ValueError(
                    f"layer {name!r}: the table says (weight bits, act bits, storage) = "
                    f"{table[0]}, {table[1]}, {table[2].value}, the policy "
                    f"{policy[0]}, {policy[1]}, {policy[2].value}"
                )
        for name, site in self.sites.items():
            spec = self.policy.site_spec(name)
            if spec is None:
                raise ValueError(f"site {name!r} is in the table but the policy keeps it in float")
            if site.act_bits != spec.bits:
                raise ValueError(
                    f"site {name!r}: the table says {site.act_bits} bits, the policy {spec.bits}"
                )
        names = [set(self.layers), set(self.sites), set(self.float_tensors)]
        both = sorted((names[0] & names[1]) | (names[0] | names[1]) & names[2])
        if both:
            raise ValueError(f"names in more than one of layers, sites, float_tensors: {both}")
        return self

    def to_json(self) -> bytes:
        """The manifest as UTF-8 JSON (2-space indented, no NaN/inf, trailing newline)."""
        return json_bytes(self.model_dump(mode="json"))


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    """How manifests are written: UTF-8 JSON, 2-space indented, no NaN/inf, trailing newline."""
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()


def default_version_name(bits: str, created: datetime) -> str:
    """e.g. ptq4vm-w8a8-20261126T153000Z."""
    return f"ptq4vm-{bits}-{created.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def check_version_name(name: str) -> str:
    if not re.fullmatch(VERSION_NAME_PATTERN, name):
        raise ArtifactError(
            f"version name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def core_digest(raw: Mapping[str, Any]) -> str:
    """sha256 of the manifest without `metrics` and `files`, as canonical JSON."""
    core = {k: v for k, v in raw.items() if k not in MUTABLE_FIELDS}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def load_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`; ArtifactError naming the file when it is missing or bad."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{file}: missing; is {file.parent} an artifact directory?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ArtifactError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{file}: must hold a JSON object, got {type(data).__name__}")
    return data


def check_header(raw: Mapping[str, Any], file: Path) -> None:
    """Format and version, checked before the rest, so an unknown version says so plainly."""
    if raw.get("format") != FORMAT:
        raise ArtifactError(
            f"{file}: not a ptq4vm artifact manifest (format={raw.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    version = raw.get("version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ArtifactError(
            f"{file}: artifact format version {version!r} is not supported: this build reads "
            f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}; re-export the artifact "
            "or upgrade ptq4vm"
        )


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as "field.path: message; ...", without echoing the whole input."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_manifest(raw: dict[str, Any], file: Path) -> Manifest:
    """Validates a manifest JSON object read from `file`."""
    check_header(raw, file)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{file}: invalid manifest: {describe_errors(exc)}") from exc
    manifest._raw = raw
    return manifest


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the artifact directory `path` (the tensors are not read)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact directory (it does not exist or is a file)")
    file = path / MANIFEST_FILE
    return parse_manifest(load_json(file), file)


def is_artifact_dir(path: Path) -> bool:
    """True when `path` holds a manifest of this format, of any version (even unreadable ones
    of this build), so that `save_artifact` may replace it."""
    try:
        raw = load_json(path / MANIFEST_FILE)
    except ArtifactError:
        return False
    return raw.get("format") == FORMAT


def _check_metrics(metrics: Mapping[str, Any], file: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ArtifactError(f"{file}: metric names must be strings, got {key!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ArtifactError(f"{file}: metric {key!r} is {value}: store finite numbers only")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{file}: metric {key!r} is not JSON-able: {exc}") from exc
        out[key] = value
    return out


def update_metrics(path: Path, metrics: Mapping[str, Any]) -> Manifest:
    """Merges `metrics` into the artifact's `metrics` (new keys added, same keys replaced) and
    rewrites `manifest.json` atomically; returns the new manifest.

    Values must be JSON-able (numbers finite). Concurrent updates of one artifact are
    serialised by an exclusive lock on its directory. Nothing else in the manifest changes, so
    the artifact stays verifiable (metrics are outside the digest bound to the tensors).
    """
    path = Path(path)
    file = path / MANIFEST_FILE
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY) if path.is_dir() else -1
    if fd < 0:
        raise ArtifactError(f"{path}: not an artifact directory (it does not exist or is a file)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        manifest = read_manifest(path)
        raw = dict(manifest.raw)
        raw["metrics"] = {**manifest.metrics, **_check_metrics(metrics, file)}
        updated = parse_manifest(raw, file)
        # The raw object is written back, not a re-serialisation of the parsed model, so that
        # every other field stays exactly as saved (and the core digest keeps matching).
        replace_file(file, json_bytes(raw))
    finally:
        os.close(fd)  # releases the lock
    logger.info("updated metrics of %s: %s", path, sorted(metrics))
    return updated
