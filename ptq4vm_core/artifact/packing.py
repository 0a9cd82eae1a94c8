"""How integer weights are laid out in the tensor file.

Grids of more than 4 bits are stored one value per byte: int8 for a signed (symmetric) grid,
uint8 for an unsigned one. Grids of 4 bits or fewer are packed two values per byte into uint8,
low nibble first (element 2i in bits 0-3 of byte i, element 2i+1 in bits 4-7), signed values as
4-bit two's complement; an odd element count leaves a zero high nibble in the last byte. The
unpacked shape is recorded in the manifest, since the packed tensor is 1-D.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import Tensor

from ptq4vm_core.quant.spec import QuantSpec

NIBBLE_BITS = 4


class Storage(StrEnum):
    """The dtype of a stored integer weight; the "x2" kinds hold two 4-bit values per byte."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT4X2 = "int4x2"
    UINT4X2 = "uint4x2"

    @property
    def packed(self) -> bool:
        return self in (Storage.INT4X2, Storage.UINT4X2)

    @property
    def signed(self) -> bool:
        return self in (Storage.INT8, Storage.INT4X2)

    @property
    def dtype(self) -> torch.dtype:
        """The safetensors dtype of the stored tensor."""
        return torch.int8 if self is Storage.INT8 else torch.uint8

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The stored tensor's shape for an unpacked `shape`: the same, or [ceil(numel/2)]."""
        if self.packed:
            return (math.ceil(math.prod(shape) / 2),)
        return shape


def storage_for(spec: QuantSpec) -> Storage:
    """Packed below 5 bits; signed when the grid has negative values (qmin < 0)."""
    signed = spec.qmin < 0
    if spec.bits <= NIBBLE_BITS:
        return Storage.INT4X2 if signed else Storage.UINT4X2
    return Storage.INT8 if signed else Storage.UINT8


def _nibble_range(signed: bool) -> tuple[int, int]:
    return (-8, 7) if signed else (0, 15)


def pack_int4(values: Tensor, *, signed: bool) -> Tensor:
    """Integer tensor, any shape, values in [-8, 7] (signed) or [0, 15] -> uint8 [ceil(numel/2)].

    Raises ValueError for a non-integer dtype or a value outside the nibble range.
    """
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"pack_int4 needs an integer tensor, got {values.dtype}")
    lo, hi = _nibble_range(signed)
    flat = values.detach().reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(
            f"values {int(flat.min())}..{int(flat.max())} do not fit a "
            f"{'signed' if signed else 'unsigned'} 4-bit nibble [{lo}, {hi}]"
        )
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nibbles = flat & 0xF  # two's complement for negative values
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: Tensor, shape: tuple[int, ...], *, signed: bool) -> Tensor:
    """uint8 [ceil(prod(shape)/2)] -> int8 `shape`, values in [-8, 7] (signed) or [0, 15].

    Raises ValueError when the byte count does not match the shape or the padding nibble of
    an odd element count is not zero.
    """
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != math.ceil(n / 2):
        raise ValueError(
            f"a packed tensor for shape {list(shape)} must be uint8 [{math.ceil(n / 2)}], "
            f"got {packed.dtype} {list(packed.shape)}"
        )
    wide = packed.to(torch.int16)
    nibbles = torch.stack([wide & 0xF, wide >> 4], dim=1).reshape(-1)
    if n % 2 and int(nibbles[-1]) != 0:
        raise ValueError("the padding nibble after the last element is not zero")
    values = nibbles[:n]
    if signed:
        values = torch.where(values >= 8, values - 16, values)
    return values.to(torch.int8).reshape(shape)


def encode_weight(q: Tensor, spec: QuantSpec) -> Tensor:
    """Integer grid values q (any shape, in [spec.qmin, spec.qmax]) -> the stored tensor.

    int8 / uint8 of q's shape above 4 bits, packed uint8 [ceil(numel/2)] otherwise.
    """
    storage = storage_for(spec)
    if int(q.min()) < spec.qmin or int(q.max()) > spec.qmax:
        raise ValueError(
            f"integer weights {int(q.min())}..{int(q.max())} are outside the "
            f"{spec.bits}-bit grid [{spec.qmin}, {spec.qmax}]"
        )
    if storage.packed:
        return pack_int4(q, signed=storage.signed)
    return q.to(storage.dtype).contiguous()


def decode_weight(stored: Tensor, storage: Storage, shape: tuple[int, ...]) -> Tensor:
    """The stored tensor -> int32 integer grid values of `shape` (unpacked)."""
    if stored.dtype != storage.dtype or tuple(stored.shape) != storage.stored_shape(shape):
        raise ValueError(
            f"expected {storage.dtype} {list(storage.stored_shape(shape))} for {storage.value} "
            f"weights of shape {list(shape)}, got {stored.dtype} {list(stored.shape)}"
        )
    if storage.packed:
        return unpack_int4(stored, shape, signed=storage.signed).to(torch.int32)
    return stored.to(torch.int32)
