"""Frames to bytes and mattes from bytes.

`rgb24` frames and `alpha_raw` mattes need numpy only; JPEG/PNG go through OpenCV when it is
installed, else Pillow (the `images` extra installs OpenCV). Frames are `[H,W,3]` uint8 RGB;
mattes `[H,W]` uint8 (0 = background, 255 = foreground).
"""

from __future__ import annotations

import io
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ptq4vm_client.errors import CodecUnavailableError

InputFormat = Literal["jpeg", "png", "rgb24"]
OutputFormat = Literal["alpha_png", "alpha_raw"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

Frame = NDArray[np.uint8]
Alpha = NDArray[np.uint8]


def check_frame(frame: object, width: int, height: int) -> Frame:
    """`frame` as a contiguous `[height,width,3]` uint8 array, or ValueError saying what is
    wrong with it."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame is a numpy array or bytes, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        raise ValueError(
            f"frame must be [{height},{width},3] uint8 RGB (the stream's size), "
            f"got {list(frame.shape)} {frame.dtype}"
        )
    return np.ascontiguousarray(frame)


def encode_frame(frame: Frame, fmt: InputFormat, *, jpeg_quality: int = 90) -> bytes:
    """One `[H,W,3]` uint8 RGB frame as `fmt` bytes."""
    if fmt == "rgb24":
        return np.ascontiguousarray(frame).tobytes()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {fmt!r}")
    return encode_image(frame, fmt, jpeg_quality=jpeg_quality)


def encode_image(image: NDArray[np.uint8], fmt: Literal["jpeg", "png"], **kw: int) -> bytes:
    """`[H,W,3]` RGB or `[H,W]` grey uint8 as JPEG or PNG bytes."""
    quality = kw.get("jpeg_quality", 90)
    try:
        import cv2
    except ImportError:
        pass
    else:
        bgr = image[..., ::-1] if image.ndim == 3 else image
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
        if not ok:
            raise ValueError(f"OpenCV could not encode a {list(image.shape)} image as {fmt}")
        return bytes(buf.tobytes())
    pil = _pillow()
    out = io.BytesIO()
    pil.fromarray(image).save(out, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return out.getvalue()


def decode_matte(data: bytes, fmt: OutputFormat, width: int, height: int) -> Alpha:
    """A matte payload as a `[height,width]` uint8 array."""
    if fmt == "alpha_raw":
        if len(data) != width * height:
            raise ValueError(f"raw matte of {len(data)} bytes, expected {width}x{height}")
        return np.frombuffer(data, np.uint8).reshape(height, width)
    alpha = decode_png(data)
    if alpha.shape != (height, width):
        raise ValueError(f"matte of {list(alpha.shape)}, expected [{height},{width}]")
    return alpha


def decode_png(data: bytes) -> Alpha:
    """An 8-bit grey PNG as a `[H,W]` uint8 array."""
    try:
        import cv2
    except ImportError:
        pass
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"not a PNG image ({len(data)} bytes)")
        return np.asarray(image, dtype=np.uint8)
    pil = _pillow()
    with pil.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _pillow() -> Any:
    """The `PIL.Image` module (optional), or CodecUnavailableError."""
    try:
        from PIL import Image
    except ImportError:
        raise CodecUnavailableError(
            "JPEG/PNG needs OpenCV or Pillow: pip install 'ptq4vm-client[images]' "
            "(or stream with input='rgb24' and output='alpha_raw')"
        ) from None
    return Image
