"""What a WHIP session sends back, drawn from the input frame and its matte (pure functions,
called from the inference workers): `composite` over a background (a colour, the input blurred,
or an uploaded image), `alpha` (the matte as luma) or `side_by_side` (the input beside the
matte, an RGBA frame a video track can carry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.io.compose import parse_colour

Output = Literal["composite", "alpha", "side_by_side"]
OUTPUTS: tuple[Output, ...] = ("composite", "alpha", "side_by_side")
BLUR = "blur"
# The blurred background is computed at 1/BLUR_SCALE of the frame's size: as soft, far cheaper.
BLUR_SCALE = 4
BLUR_KERNEL = 9


@dataclass(frozen=True)
class Background:
    """A composite's background: a colour, `blur` (the input itself, blurred) or an image
    (RGB, already of the stream's size)."""

    colour: tuple[int, int, int] | None = None
    blur: bool = False
    image: NDArray[np.uint8] | None = None

    @classmethod
    def parse(cls, spec: str) -> Background:
        """A colour or `blur`; ValueError otherwise (an image id is looked up by the caller)."""
        if spec.strip().lower() == BLUR:
            return cls(blur=True)
        colour = parse_colour(spec)
        if colour is None:
            raise ValueError(
                f"background {spec!r} is no colour (a name, #RRGGBB or R,G,B), not `blur` and "
                "no uploaded image id (POST /v1/backgrounds)"
            )
        return cls(colour=colour)

    def plate(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The background behind frame `rgb`, of its size."""
        height, width = rgb.shape[:2]
        if self.blur:
            small = cv2.resize(
                rgb, (max(1, width // BLUR_SCALE), max(1, height // BLUR_SCALE)),
                interpolation=cv2.INTER_AREA,
            )  # fmt: skip
            small = cv2.GaussianBlur(small, (BLUR_KERNEL, BLUR_KERNEL), 0)
            plate = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
            return np.asarray(plate, np.uint8)
        if self.image is not None:
            if self.image.shape[:2] != (height, width):
                fitted = cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA)
                return np.asarray(fitted, np.uint8)
            return self.image
        return np.full((height, width, 3), self.colour or (0, 0, 0), np.uint8)


def render(
    rgb: NDArray[np.uint8], alpha: NDArray[np.uint8], output: Output, background: Background
) -> NDArray[np.uint8]:
    """The frame sent back for input `rgb` [H,W,3] and its matte `alpha` [H,W]: composite
    [H,W,3], alpha [H,W] (grey) or side by side [H,2W,3] (the input, then the matte)."""
    if output == "alpha":
        return alpha
    if output == "side_by_side":
        return np.hstack((rgb, cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)))
    weight = alpha.astype(np.float32) * np.float32(1 / 255)
    plate = background.plate(rgb)
    return np.asarray(cv2.blendLinear(rgb, plate, weight, 1 - weight), np.uint8)
