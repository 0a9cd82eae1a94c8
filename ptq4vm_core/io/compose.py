"""Compositing a matted foreground over a background, and parsing background specs."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: Named backgrounds accepted by :func:`parse_background` (RGB).
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "red": (255, 0, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}

_HEX_RE = re.compile(r"#([0-9a-fA-F]{6})")
_TRIPLE_RE = re.compile(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*")
_ACCEPTED = (
    f"a colour name ({', '.join(NAMED_COLOURS)}), '#RRGGBB', 'R,G,B' with values "
    "0-255, or the path of an existing PNG/JPEG image"
)


def to_uint8(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Convert a float image in ``[0, 1]`` (any shape) to uint8.

    Values are scaled by 255, rounded to nearest (ties to even) and clipped, so
    slight model overshoot saturates instead of wrapping. NaN becomes 0.
    This is the project's one float-to-8-bit conversion: served mattes, written files,
    `ptq4vm eval` and the server's calibration gate all use it, so every score is computed
    on the bytes a user receives.

    Raises:
        ValueError: ``x`` is not a floating-point array.
    """
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"to_uint8 expects a float array in [0, 1], got dtype {x.dtype}; "
            "uint8 images need no conversion"
        )
    if x.dtype == np.float32:
        return _float32_to_uint8(x)
    scaled = x * np.asarray(255, dtype=x.dtype)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


# float32 -> uint8 in chunks that stay in the cache: clip to [-1, 2] (NaN stays NaN, infinities
# and huge values come into the range where the result saturates alike), then one OpenCV pass
# computes x * float32(255) in float32, rounds it to nearest, ties to even, and saturates
# (NaN -> 0). The same bytes as the general path above (tests/engine/test_frames.py compares
# them near every rounding tie, at the edges and on the specials), in a third of its time on a
# 720p matte: this runs once per served frame.
_CHUNK = 1 << 18
_TIMES_255 = np.full(_CHUNK, 255, np.float32)


def _float32_to_uint8(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.size, np.uint8)
    scratch = np.empty(min(_CHUNK, flat.size), np.float32)
    for start in range(0, flat.size, _CHUNK):
        stop = min(start + _CHUNK, flat.size)
        # [1, n]: OpenCV takes a 1-d array of up to 4 values for a scalar, never a 2-d one.
        part = scratch[: stop - start].reshape(1, -1)
        np.clip(flat[start:stop].reshape(1, -1), -1.0, 2.0, out=part)
        times = _TIMES_255[: stop - start].reshape(1, -1)
        cv2.multiply(part, times, dst=out[start:stop].reshape(1, -1), dtype=cv2.CV_8U)
    return out.reshape(x.shape)


def _solid(rgb: tuple[int, int, int], width: int, height: int) -> npt.NDArray[np.uint8]:
    return np.full((height, width, 3), rgb, dtype=np.uint8)


def parse_colour(spec: str) -> tuple[int, int, int] | None:
    """The RGB colour `spec` names (a colour name, ``'#RRGGBB'`` or ``'R,G,B'``), or None when
    it is no colour form; ValueError for ``R,G,B`` values over 255. Never reads a file."""
    text = spec.strip()
    named = NAMED_COLOURS.get(text.lower())
    if named is not None:
        return named
    if match := _HEX_RE.fullmatch(text):
        value = int(match.group(1), 16)
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    if match := _TRIPLE_RE.fullmatch(text):
        r, g, b = (int(v) for v in match.groups())
        if max(r, g, b) > 255:
            raise ValueError(f"background {spec!r}: each of R,G,B must be 0-255")
        return r, g, b
    return None


def parse_background(spec: str, width: int, height: int) -> npt.NDArray[np.uint8]:
    """Build a background plate from a colour spec or an image path.

    Args:
        spec: A colour name (``green``, ``blue``, ``red``, ``white``, ``black``,
            ``gray``/``grey``; case-insensitive), ``'#RRGGBB'``, ``'R,G,B'`` (0-255
            each), or a path to an image. Colour forms win over a file of that name.
        width: Output width in pixels, > 0.
        height: Output height in pixels, > 0.

    Returns:
        ``[height, width, 3]`` uint8 RGB array. Images are resized with
        ``INTER_AREA`` when shrinking both axes and ``INTER_LINEAR`` otherwise;
        the aspect ratio is not preserved.

    Raises:
        ValueError: ``spec`` matches none of the forms, names an unreadable image,
            or ``width``/``height`` is not positive.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"background size must be positive, got {width}x{height}")
    text = spec.strip()
    colour = parse_colour(text)
    if colour is not None:
        return _solid(colour, width, height)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"unrecognised background {spec!r}; expected {_ACCEPTED}")
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"background image {path} cannot be decoded; expected {_ACCEPTED}")
    src_h, src_w = bgr.shape[:2]
    # INTER_AREA averages source pixels, avoiding moire when downscaling; it
    # degenerates to nearest-neighbour blockiness when upscaling, where LINEAR wins.
    shrink = width < src_w and height < src_h
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    if (src_w, src_h) != (width, height):
        bgr = cv2.resize(bgr, (width, height), interpolation=interpolation)
    return np.ascontiguousarray(bgr[..., ::-1])


def _as_unit_float(x: npt.NDArray[Any], name: str) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32]
    if x.dtype == np.uint8:
        unit = x.astype(np.float32) * np.float32(1.0 / 255.0)
        return unit
    if np.issubdtype(x.dtype, np.floating):
        unit = np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
        return unit
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {x.dtype}")


def composite(
    fgr: npt.NDArray[Any], pha: npt.NDArray[Any], background: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """Alpha-composite ``I = a * F + (1 - a) * B``, rounded to nearest.

    Args:
        fgr: ``[H, W, 3]`` RGB foreground, uint8 or float in ``[0, 1]``.
        pha: ``[H, W]`` or ``[H, W, 1]`` alpha, uint8 or float in ``[0, 1]``.
        background: ``[H, W, 3]`` uint8 RGB.

    Returns:
        ``[H, W, 3]`` uint8 RGB. Float inputs are clipped to ``[0, 1]`` first.

    Raises:
        ValueError: a shape or dtype differs from the above.
    """
    if fgr.ndim != 3 or fgr.shape[2] != 3:
        raise ValueError(f"fgr must have shape [H, W, 3], got {fgr.shape}")
    height, width = fgr.shape[:2]
    if pha.shape not in ((height, width), (height, width, 1)):
        raise ValueError(f"pha must have shape ({height}, {width}) to match fgr, got {pha.shape}")
    if background.shape != fgr.shape:
        raise ValueError(
            f"background must have shape {fgr.shape} to match fgr, got {background.shape}"
        )
    if background.dtype != np.uint8:
        raise ValueError(f"background must be uint8, got dtype {background.dtype}")
    alpha = pha.reshape(height, width, 1)
    if fgr.dtype == np.uint8 and alpha.dtype == np.uint8:
        # Exact integer path: a*F + (255-a)*B <= 255*255 fits uint16, and the
        # quotient by 255 can never land on .5, so +127 // 255 is exact rounding.
        a16 = alpha.astype(np.uint16)
        total = a16 * fgr + (255 - a16) * background + 127
        result: npt.NDArray[np.uint8] = (total // 255).astype(np.uint8)
        return result
    a = _as_unit_float(alpha, "pha")
    f = _as_unit_float(fgr, "fgr")
    out = a * (f * np.float32(255.0)) + (np.float32(1.0) - a) * background
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    composed: npt.NDArray[np.uint8] = out.astype(np.uint8)
    return composed
