from __future__ import annotations

import json

import pytest

from ptq4vm_core.quant.spec import LayerPolicy, QuantPolicy, QuantSpec, parse_bits


@pytest.mark.parametrize("bits", range(2, 9))
def test_bits_2_to_8_accepted(bits: int) -> None:
    assert QuantSpec(bits, symmetric=True, per_channel=True).bits == bits


@pytest.mark.parametrize("bits", [1, 9, 0, 16])
def test_bits_out_of_range_refused(bits: int) -> None:
    with pytest.raises(ValueError, match=f"bits={bits}"):
        QuantSpec(bits, symmetric=False, per_channel=False)


def test_non_bool_flags_refused() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        QuantSpec(8, symmetric=1, per_channel=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bits", "symmetric", "qmin", "qmax"),
    [
        (8, True, -127, 127),
        (4, True, -7, 7),
        (2, True, -1, 1),
        (8, False, 0, 255),
        (4, False, 0, 15),
    ],
)
def test_grid(bits: int, symmetric: bool, qmin: int, qmax: int) -> None:
    spec = QuantSpec(bits, symmetric=symmetric, per_channel=False)
    assert (spec.qmin, spec.qmax) == (qmin, qmax)


def test_spec_round_trip() -> None:
    spec = QuantSpec(4, symmetric=True, per_channel=False)
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unexpected"):
        QuantSpec.from_dict({**spec.to_dict(), "signed": True})


def test_policy_defaults_and_keep_fp() -> None:
    policy = QuantPolicy(weight_bits=4, act_bits=8, keep_fp=frozenset({"refiner.conv"}))
    layer = policy.for_layer("any.conv")
    assert layer == LayerPolicy(
        weight=QuantSpec(4, symmetric=True, per_channel=True),
        activation=QuantSpec(8, symmetric=False, per_channel=False),
    )
    assert policy.for_layer("refiner.conv") is None
    weight_only = QuantPolicy(weight_bits=8, act_bits=None).for_layer("x")
    assert weight_only is not None
    assert weight_only.activation is None


def test_policy_from_bits_first_last_8bit() -> None:
    policy = QuantPolicy.from_bits(4, 4, first_last_8bit=("stem", "head"))
    for name in ("stem", "head"):
        layer = policy.for_layer(name)
        assert layer is not None
        assert layer.weight.bits == 8
        assert layer.activation is not None
        assert layer.activation.bits == 8
    middle = policy.for_layer("body.0")
    assert middle is not None
    assert middle.weight.bits == 4
    assert middle.activation is not None
    assert middle.activation.bits == 4


def test_policy_round_trip_through_json() -> None:
    policy = QuantPolicy.from_bits(4, 8, ("a", "b"), keep_fp=frozenset({"c"}))
    text = json.dumps(policy.to_dict(), indent=2)
    assert QuantPolicy.from_dict(json.loads(text)) == policy
    assert hash(QuantPolicy.from_dict(json.loads(text))) == hash(policy)
    assert policy.to_dict()["keep_fp"] == ["c"]
    weight_only = QuantPolicy.from_bits(8, None, ("a",))
    assert QuantPolicy.from_dict(json.loads(json.dumps(weight_only.to_dict()))) == weight_only


def test_policy_is_decoupled_from_callers_dict() -> None:
    overrides = {"a": QuantPolicy(8, 8).default_layer}
    policy = QuantPolicy(4, 4, overrides=overrides)
    overrides["b"] = overrides["a"]
    assert "b" not in policy.overrides


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="act_bits=9"):
        QuantPolicy(weight_bits=4, act_bits=9)
    with pytest.raises(ValueError, match=r"\['a'\]"):
        QuantPolicy.from_bits(4, 4, ("a",), keep_fp=frozenset({"a"}))
    with pytest.raises(ValueError, match="missing"):
        QuantPolicy.from_dict({"weight_bits": 4, "act_bits": 4, "overrides": {}})


def test_describe_lists_layers() -> None:
    policy = QuantPolicy.from_bits(4, 4, ("stem",), keep_fp=frozenset({"head"}))
    table = policy.describe(["stem", "body.0", "head"]).splitlines()
    assert table[0].split() == ["layer", "wbits", "abits", "rule"]
    assert table[1].split() == ["stem", "8", "8", "override"]
    assert table[2].split() == ["body.0", "4", "4", "default"]
    assert table[3].split() == ["head", "fp", "fp", "keep_fp"]


@pytest.mark.parametrize(("text", "bits"), [("w8a8", (8, 8)), ("w4a8", (4, 8)), ("W4A4", (4, 4))])
def test_parse_bits(text: str, bits: tuple[int, int]) -> None:
    assert parse_bits(text) == bits


@pytest.mark.parametrize("text", ["w8", "a8w8", "w3a3", "w4a16", "", "int8"])
def test_parse_bits_refuses_others(text: str) -> None:
    with pytest.raises(ValueError, match="w8a8, w4a8, w4a4"):
        parse_bits(text)
