"""Frames in (JPEG, PNG, raw RGB) and mattes out (8-bit grey PNG, raw bytes). Pure functions,
called from the inference workers."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from ptq4vm_core.io.writer import encode_png
from server.media.sniff import MediaError, image_header

InputFormat = Literal["jpeg", "png", "rgb24"]
OutputFormat = Literal["alpha_png", "alpha_raw"]


class FrameError(ValueError):
    """A frame cannot be used; the message says why and what was expected."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def network_size_error(width: int, height: int, ratio: float) -> str | None:
    """Why the network cannot run at `ratio` x a WxH frame, or None. It resizes the frame by
    the ratio first (a float32 scale, sizes rounded down); a side under 1 px there fails in
    the engine's first convolution."""
    side = min(width, height)
    if np.floor(np.float32(side) * np.float32(ratio)) >= 1:
        return None
    return (
        f"downsample_ratio {ratio:g} runs the network at less than 1 px on the {side}-px side "
        f"of a {width}x{height} frame; use a ratio of at least {1 / side:.4g} or larger frames"
    )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) a PNG or JPEG declares in its header, read without decoding;
    FrameError(bad_frame) for any other format (the allow-list is PNG and JPEG)."""
    try:
        header = image_header(data)
    except MediaError as exc:
        raise FrameError("bad_frame", f"cannot decode {len(data)} bytes: {exc}") from None
    return header.width, header.height


def decode_image(data: bytes) -> NDArray[np.uint8]:
    """PNG/JPEG -> [H,W,3] uint8 RGB, contiguous; FrameError if undecodable. Check
    `image_size` against a limit first: this decodes every pixel the header declares."""
    image_size(data)
    return _decoded_rgb(data)


def _decoded_rgb(data: bytes) -> NDArray[np.uint8]:
    # RGB from the decoder itself, contiguous: what the engine takes as it is.
    buffer = np.frombuffer(data, np.uint8)
    rgb = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB) if buffer.size else None
    if rgb is None:
        raise FrameError("bad_frame", f"cannot decode {len(data)} bytes as a PNG or JPEG image")
    return np.asarray(rgb, dtype=np.uint8)


def decode_frame(data: bytes, fmt: InputFormat, width: int, height: int) -> NDArray[np.uint8]:
    """A frame message -> [H,W,3] uint8 RGB of the session's size, or FrameError: for rgb24 a
    view of the message's bytes (read-only, no copy), for PNG/JPEG the decoded image: the
    engine's input as it is (`frames.infer_frames`)."""
    if fmt == "rgb24":
        check_raw_size(data, width, height)
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    # The declared size first: a frame of another size (a decompression bomb included) is
    # refused before a pixel is decoded.
    declared = image_size(data)
    if declared != (width, height):
        raise FrameError(
            "wrong_size",
            f"frame is {declared[0]}x{declared[1]}, the session was started at "
            f"{width}x{height}; start a new session for another size",
        )
    rgb = _decoded_rgb(data)  # the header was read above
    if rgb.shape[:2] != (height, width):
        raise FrameError("bad_frame", "the frame decodes to another size than its header")
    return rgb


def check_raw_size(data: bytes, width: int, height: int) -> None:
    expected = width * height * 3
    if len(data) != expected:
        raise FrameError(
            "wrong_size",
            f"rgb24 frame has {len(data)} bytes, a {width}x{height} frame has {expected} "
            "(width*height*3, rows top to bottom, RGB)",
        )


def encode_alpha(alpha: NDArray[np.uint8], fmt: OutputFormat) -> bytes:
    """A matte [H,W] uint8 -> 8-bit grey PNG or H*W raw bytes (row-major)."""
    if fmt == "alpha_raw":
        return alpha.tobytes()
    return encode_png(alpha)
