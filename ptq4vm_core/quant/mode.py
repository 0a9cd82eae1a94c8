"""The three states every quantizer in a quantized model is in, switched together."""

from __future__ import annotations

from enum import StrEnum


class QuantMode(StrEnum):
    """What a quantizer does in `forward`.

    FP: pass the input through unchanged (the model computes exactly what the float model does).
    CALIBRATING: soft AdaRound weights, learnable scales and, where `drop_prob > 0`, QDrop's
    random mix of float and fake-quantized activations; differentiable, and random while
    gradients are enabled.
    QUANTIZED: hard rounding, deterministic; what the exported integer model computes.
    """

    FP = "fp"
    CALIBRATING = "calibrating"
    QUANTIZED = "quantized"


class Moded:
    """A quantizer's `mode`, a QuantMode (a string is coerced on assignment): FP at first."""

    _mode: QuantMode = QuantMode.FP

    @property
    def mode(self) -> QuantMode:
        return self._mode

    @mode.setter
    def mode(self, value: QuantMode) -> None:
        self._mode = QuantMode(value)
