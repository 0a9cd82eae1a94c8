"""Quantization recipes as data: one quantizer's spec, one layer's policy, a whole model's policy.

Integer grids (what ONNX Runtime's int8 kernels expect):

* symmetric (weights): signed narrow range [-(2^(b-1)-1), 2^(b-1)-1], zero point exactly 0;
  8 bits gives [-127, 127], so the grid is symmetric around 0 and -128 is never used.
* asymmetric (activations): unsigned [0, 2^b-1] with an integer zero point in that range.

Besides each conv's input, a policy may put grids on tensors the deployed graph keeps in
integer: a conv's *output* (`outputs`: where the runtime requantizes what an int8 conv writes
before a float op, e.g. a residual add or a hard-swish), and the *parts* of a conv's input
(`input_parts`: a conv over a concatenation, each concatenated tensor on its own grid, which
the runtime runs as one int8 conv per part, summed). Both become activation sites of the
quantized conv, named `<conv>.out_site` and `<conv>.in_parts.<k>`.

A `QuantPolicy` is JSON-able (`to_dict`/`from_dict` round-trip), so a recipe can be printed,
stored in an artifact manifest and diffed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MIN_BITS = 2
MAX_BITS = 8


class Bits(StrEnum):
    """The bit configurations a model is calibrated at: weight and activation bits. The one
    spelling of them (CLI, admin API, calibration worker, manifests)."""

    W8A8 = "w8a8"
    W4A8 = "w4a8"
    W4A4 = "w4a4"


SUPPORTED_BIT_CONFIGS = tuple(b.value for b in Bits)


class Int8Target(StrEnum):
    """The x86 int8 kernels a model is calibrated for (like NNCF's target device).

    `vnni`: CPUs whose int8 dot products sum four u8 x s8 products into int32 (AVX512-VNNI,
    AVX-VNNI, AMX) or that are not x86: exact at any weight. `avx2`: CPUs without VNNI, whose
    kernels sum *pairs* of u8 x s8 products into int16 with saturation (`vpmaddubsw`); a dense
    conv computes exactly there only while every pair stays within int16, which the 7-bit
    weight grid guarantees (`SATURATION_SAFE_WEIGHT_BITS`)."""

    VNNI = "vnni"
    AVX2 = "avx2"


# Dense int8 convs of the `avx2` target: symmetric 7-bit weights, integers in [-63, 63], so a
# pair of u8 x s8 products is at most 255 * (63 + 63) = 32130 < 32767 (int16): nothing
# saturates and the AVX2 kernels compute the same integers as VNNI.
SATURATION_SAFE_WEIGHT_BITS = 7


def _require_keys(data: Mapping[str, Any], keys: set[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object (dict), got {type(data).__name__}")
    missing = keys - set(data)
    extra = set(data) - keys
    if missing or extra:
        raise ValueError(
            f"{what} must have exactly the keys {sorted(keys)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def _check_bits(bits: object, what: str) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise ValueError(f"{what} must be an int, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what}={bits} is out of range: use {MIN_BITS}..{MAX_BITS} bits")
    return bits


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: bit width, grid (symmetric or not), scale granularity."""

    bits: int
    symmetric: bool
    per_channel: bool

    def __post_init__(self) -> None:
        _check_bits(self.bits, "QuantSpec.bits")
        for name in ("symmetric", "per_channel"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"QuantSpec.{name} must be a bool, got {value!r}")

    @property
    def qmin(self) -> int:
        """Smallest integer on the grid: -(2^(b-1)-1) symmetric, 0 asymmetric."""
        if self.symmetric:
            return -((1 << (self.bits - 1)) - 1)
        return 0

    @property
    def qmax(self) -> int:
        """Largest integer on the grid: 2^(b-1)-1 symmetric, 2^b-1 asymmetric."""
        if self.symmetric:
            return (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "symmetric": self.symmetric, "per_channel": self.per_channel}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantSpec:
        _require_keys(data, {"bits", "symmetric", "per_channel"}, "QuantSpec")
        return cls(bits=data["bits"], symmetric=data["symmetric"], per_channel=data["per_channel"])


def weight_spec(bits: int) -> QuantSpec:
    """The default weight quantizer: symmetric, one scale per output channel."""
    return QuantSpec(bits=bits, symmetric=True, per_channel=True)


def activation_spec(bits: int) -> QuantSpec:
    """The default activation quantizer: asymmetric (unsigned, zero point), one scale per tensor."""
    return QuantSpec(bits=bits, symmetric=False, per_channel=False)


@dataclass(frozen=True)
class LayerPolicy:
    """How one conv layer is quantized; `activation=None` leaves its input in float."""

    weight: QuantSpec
    activation: QuantSpec | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight.to_dict(),
            "activation": None if self.activation is None else self.activation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPolicy:
        _require_keys(data, {"weight", "activation"}, "LayerPolicy")
        act = data["activation"]
        return cls(
            weight=QuantSpec.from_dict(data["weight"]),
            activation=None if act is None else QuantSpec.from_dict(act),
        )


OUT_SITE = "out_site"
IN_PARTS = "in_parts"


@dataclass(frozen=True)
class OutputGrid:
    """A grid on a conv's output: `spec` (asymmetric, per tensor); `after_relu` puts it on the
    ReLU that follows the conv (the runtime folds that ReLU into the requantization)."""

    spec: QuantSpec
    after_relu: bool = False

    def __post_init__(self) -> None:
        if self.spec.symmetric or self.spec.per_channel:
            raise ValueError("output grids are asymmetric and per tensor")
        if not isinstance(self.after_relu, bool):
            raise ValueError(f"OutputGrid.after_relu must be a bool, got {self.after_relu!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "after_relu": self.after_relu}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputGrid:
        _require_keys(data, {"spec", "after_relu"}, "OutputGrid")
        return cls(QuantSpec.from_dict(data["spec"]), data["after_relu"])


def output_site(conv: str) -> str:
    """The activation site of conv `conv`'s output grid."""
    return f"{conv}.{OUT_SITE}"


def part_sites(conv: str, parts: int) -> list[str]:
    """The activation sites of conv `conv`'s input parts, in channel order."""
    return [f"{conv}.{IN_PARTS}.{k}" for k in range(parts)]


@dataclass(frozen=True)
class QuantPolicy:
    """Which conv layers of a model are quantized, and with how many bits.

    Every conv gets the default policy (`weight_bits` symmetric per-channel weights,
    `act_bits` asymmetric per-tensor input activations; `act_bits=None` is weight-only),
    except layers named in `overrides` (qualified module names, as `named_modules` gives
    them) and layers in `keep_fp`, which stay in float. `outputs` names the convs whose
    outputs get a grid; `input_parts` the convs whose input is quantized part by part (the
    channel count of each part, summing to the conv's input channels), each part with the
    layer's activation spec.
    """

    weight_bits: int
    act_bits: int | None
    overrides: dict[str, LayerPolicy] = field(default_factory=dict)
    keep_fp: frozenset[str] = frozenset()
    outputs: dict[str, OutputGrid] = field(default_factory=dict)
    input_parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bits(self.weight_bits, "QuantPolicy.weight_bits")
        if self.act_bits is not None:
            _check_bits(self.act_bits, "QuantPolicy.act_bits")
        # Own copies, so that later edits to the caller's dict or set cannot change the policy.
        object.__setattr__(self, "overrides", dict(self.overrides))
        object.__setattr__(self, "keep_fp", frozenset(self.keep_fp))
        object.__setattr__(self, "outputs", dict(self.outputs))
        parts = {name: tuple(counts) for name, counts in self.input_parts.items()}
        object.__setattr__(self, "input_parts", parts)
        for name, grid in self.outputs.items():
            if not isinstance(grid, OutputGrid):
                raise ValueError(f"output grid of {name!r} must be an OutputGrid, got {grid!r}")
        for name, counts in parts.items():
            if len(counts) < 2 or not all(isinstance(c, int) and c > 0 for c in counts):
                raise ValueError(
                    f"input parts of {name!r} must be two or more positive channel counts, "
                    f"got {counts!r}"
                )
        for name, layer in self.overrides.items():
            if not isinstance(layer, LayerPolicy):
                raise ValueError(f"override for {name!r} must be a LayerPolicy, got {layer!r}")
        both = sorted(self.keep_fp & self.overrides.keys())
        if both:
            raise ValueError(
                f"layers {both} are both overridden and kept in float: remove them from one"
            )

    def __hash__(self) -> int:
        overrides = tuple(sorted(self.overrides.items()))
        outputs = tuple(sorted(self.outputs.items()))
        parts = tuple(sorted(self.input_parts.items()))
        return hash((self.weight_bits, self.act_bits, overrides, self.keep_fp, outputs, parts))

    @property
    def default_layer(self) -> LayerPolicy:
        """The policy of every layer that is neither overridden nor kept in float."""
        act = None if self.act_bits is None else activation_spec(self.act_bits)
        return LayerPolicy(weight=weight_spec(self.weight_bits), activation=act)

    def for_layer(self, name: str) -> LayerPolicy | None:
        """The layer's policy, or None when the layer stays in float."""
        if name in self.keep_fp:
            return None
        return self.overrides.get(name, self.default_layer)

    def input_spec(self, name: str) -> QuantSpec | None:
        """The one grid of conv `name`'s whole input: None when its input stays in float or
        is quantized part by part (`input_parts`)."""
        layer = self.for_layer(name)
        if layer is None or name in self.input_parts:
            return None
        return layer.activation

    def conv_sites(self, name: str) -> list[str]:
        """The activation sites quantized conv `name` owns: its input parts, its output."""
        layer = self.for_layer(name)
        if layer is None:
            return []
        sites = []
        if layer.activation is not None and name in self.input_parts:
            sites += part_sites(name, len(self.input_parts[name]))
        if name in self.outputs:
            sites.append(output_site(name))
        return sites

    def site_spec(self, name: str) -> QuantSpec | None:
        """The grid of activation site `name`: a conv's output or input part (see
        `conv_sites`), or a site the model marks (`ActivationSite`), which takes the policy of
        its own name like a layer. None: the site stays in float."""
        owner, _, leaf = name.rpartition(".")
        if leaf == OUT_SITE and owner in self.outputs:
            return self.outputs[owner].spec if self.for_layer(owner) is not None else None
        conv, _, kind = owner.rpartition(".")
        if kind == IN_PARTS and name in self.conv_sites(conv):
            return self.input_parts_spec(conv)
        layer = self.for_layer(name)
        return None if layer is None else layer.activation

    def input_parts_spec(self, conv: str) -> QuantSpec | None:
        """The grid spec of each input part of conv `conv` (its layer's activation spec)."""
        layer = self.for_layer(conv)
        return None if layer is None else layer.activation

    @property
    def named_layers(self) -> frozenset[str]:
        """Every layer name the policy mentions (overrides, keep_fp, outputs, input parts)."""
        return self.keep_fp.union(self.overrides, self.outputs, self.input_parts)

    @classmethod
    def from_bits(
        cls,
        w_bits: int,
        a_bits: int | None,
        first_last_8bit: tuple[str, ...] = (),
        keep_fp: frozenset[str] = frozenset(),
    ) -> QuantPolicy:
        """Uniform bits everywhere except `first_last_8bit` layers, which get W8A8.

        With `a_bits=None` (weight-only) those layers get W8 and float activations.
        """
        eight = LayerPolicy(
            weight=weight_spec(8), activation=None if a_bits is None else activation_spec(8)
        )
        return cls(
            weight_bits=w_bits,
            act_bits=a_bits,
            overrides=dict.fromkeys(first_last_8bit, eight),
            keep_fp=keep_fp,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with sorted names so that two recipes diff line by line."""
        return {
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "overrides": {k: self.overrides[k].to_dict() for k in sorted(self.overrides)},
            "keep_fp": sorted(self.keep_fp),
            "outputs": {k: self.outputs[k].to_dict() for k in sorted(self.outputs)},
            "input_parts": {k: list(self.input_parts[k]) for k in sorted(self.input_parts)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantPolicy:
        """The inverse of `to_dict`. A policy written before output grids and input parts
        existed (no such keys) reads as one without them."""
        if isinstance(data, Mapping):
            data = {"outputs": {}, "input_parts": {}} | dict(data)
        keys = {"weight_bits", "act_bits", "overrides", "keep_fp", "outputs", "input_parts"}
        _require_keys(data, keys, "QuantPolicy")
        outputs, parts = data["outputs"], data["input_parts"]
        if not isinstance(outputs, Mapping) or not isinstance(parts, Mapping):
            raise ValueError("QuantPolicy.outputs and input_parts must be objects")
        overrides = data["overrides"]
        if not isinstance(overrides, Mapping):
            raise ValueError(f"QuantPolicy.overrides must be an object, got {overrides!r}")
        keep_fp = data["keep_fp"]
        if isinstance(keep_fp, str) or not isinstance(keep_fp, Iterable):
            raise ValueError(f"QuantPolicy.keep_fp must be a list of names, got {keep_fp!r}")
        return cls(
            weight_bits=data["weight_bits"],
            act_bits=data["act_bits"],
            overrides={str(k): LayerPolicy.from_dict(v) for k, v in overrides.items()},
            keep_fp=frozenset(str(n) for n in keep_fp),
            outputs={str(k): OutputGrid.from_dict(v) for k, v in outputs.items()},
            input_parts={str(k): _counts(v, str(k)) for k, v in parts.items()},
        )

    def describe(self, names: Iterable[str]) -> str:
        """A printable table, one row per layer name: weight bits, activation bits, rule.

        Bits read "fp" for a float tensor; rule is "default", "override" or "keep_fp".
        """
        rows = [("layer", "wbits", "abits", "rule")]
        for name in names:
            layer = self.for_layer(name)
            if layer is None:
                rows.append((name, "fp", "fp", "keep_fp"))
                continue
            abits = "fp" if layer.activation is None else str(layer.activation.bits)
            rule = "override" if name in self.overrides else "default"
            rows.append((name, str(layer.weight.bits), abits, rule))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        return "\n".join(line.rstrip() for line in lines)


def _counts(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"input parts of {name!r} must be a list of channel counts")
    counts = tuple(value)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ValueError(f"input parts of {name!r} must be integers, got {counts!r}")
    return counts


def parse_bits(config: str) -> tuple[int, int]:
    """Parses "w4a8" -> (4, 8): weight and activation bits of one of `SUPPORTED_BIT_CONFIGS`."""
    key = config.strip().lower()
    if key not in SUPPORTED_BIT_CONFIGS:
        raise ValueError(
            f"unknown bit config {config!r}: use one of {', '.join(SUPPORTED_BIT_CONFIGS)}"
        )
    w, a = key[1:].split("a")
    return int(w), int(a)
