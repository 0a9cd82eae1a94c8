from __future__ import annotations

import pytest
import torch

from ptq4vm_core.artifact.packing import (
    Storage,
    decode_weight,
    encode_weight,
    pack_int4,
    storage_for,
    unpack_int4,
)
from ptq4vm_core.quant.spec import QuantSpec


@pytest.mark.parametrize("shape", [(0,), (1,), (2,), (7,), (3, 5), (4, 1, 3, 3), (5, 3, 3, 3)])
@pytest.mark.parametrize("signed", [True, False])
def test_int4_round_trip(shape: tuple[int, ...], signed: bool) -> None:
    lo, hi = (-8, 7) if signed else (0, 15)
    g = torch.Generator().manual_seed(sum(shape))
    values = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int32)
    packed = pack_int4(values, signed=signed)
    n = values.numel()
    assert packed.dtype == torch.uint8
    assert packed.shape == ((n + 1) // 2,)
    unpacked = unpack_int4(packed, shape, signed=signed)
    assert unpacked.dtype == torch.int8
    assert torch.equal(unpacked.to(torch.int32), values)


def test_every_nibble_value_round_trips_at_odd_length() -> None:
    values = torch.arange(-8, 8, dtype=torch.int8)[:-1]  # 15 values: odd count, negatives
    assert torch.equal(unpack_int4(pack_int4(values, signed=True), (15,), signed=True), values)


def test_low_nibble_first_twos_complement() -> None:
    assert pack_int4(torch.tensor([1, 2]), signed=True).tolist() == [0x21]
    assert pack_int4(torch.tensor([-1, -8, 3]), signed=True).tolist() == [0x8F, 0x03]
    assert pack_int4(torch.tensor([15, 0]), signed=False).tolist() == [0x0F]


@pytest.mark.parametrize(
    ("values", "signed"),
    [([8], True), ([-9], True), ([-1], False), ([16], False)],
)
def test_pack_refuses_values_outside_a_nibble(values: list[int], signed: bool) -> None:
    with pytest.raises(ValueError, match="4-bit nibble"):
        pack_int4(torch.tensor(values), signed=signed)


def test_pack_refuses_floats() -> None:
    with pytest.raises(ValueError, match="integer tensor"):
        pack_int4(torch.tensor([1.0]), signed=True)


def test_unpack_refuses_wrong_size_and_dirty_padding() -> None:
    with pytest.raises(ValueError, match="uint8 \\[2\\]"):
        unpack_int4(torch.zeros(3, dtype=torch.uint8), (4,), signed=True)
    with pytest.raises(ValueError, match="padding nibble"):
        unpack_int4(torch.tensor([0x10], dtype=torch.uint8), (1,), signed=True)


@pytest.mark.parametrize(
    ("bits", "symmetric", "storage"),
    [
        (8, True, Storage.INT8),
        (6, True, Storage.INT8),
        (8, False, Storage.UINT8),
        (4, True, Storage.INT4X2),
        (3, True, Storage.INT4X2),
        (4, False, Storage.UINT4X2),
        (2, False, Storage.UINT4X2),
    ],
)
def test_storage_and_weight_round_trip(bits: int, symmetric: bool, storage: Storage) -> None:
    spec = QuantSpec(bits=bits, symmetric=symmetric, per_channel=True)
    assert storage_for(spec) is storage
    shape = (3, 2, 3, 3)  # 54 elements
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(spec.qmin, spec.qmax + 1, shape, generator=g, dtype=torch.int32)
    q.view(-1)[:2] = torch.tensor([spec.qmin, spec.qmax], dtype=torch.int32)
    stored = encode_weight(q, spec)
    assert stored.dtype == storage.dtype
    assert tuple(stored.shape) == storage.stored_shape(shape)
    assert torch.equal(decode_weight(stored, storage, shape), q)


def test_encode_refuses_values_off_the_grid() -> None:
    spec = QuantSpec(bits=8, symmetric=True, per_channel=True)
    with pytest.raises(ValueError, match=r"outside the 8-bit grid \[-127, 127\]"):
        encode_weight(torch.tensor([-128, 0]), spec)
