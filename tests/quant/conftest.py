"""Fixtures for the quant tests: a tiny conv net and a batch of images."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.quant.nets import TinyNet


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def images() -> Tensor:
    """[4,3,16,16] float in [0,1]."""
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
