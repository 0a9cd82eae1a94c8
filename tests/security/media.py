"""Hostile media made on the spot: decompression bombs (a few hundred KiB declaring 100 Mpx),
headers that lie, videos over each limit, a playlist that names a server file."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid RGB PNG of width x height black pixels: 300 MB decoded, ~300 KiB on the wire."""
    row = b"\x00" * (1 + 3 * width)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to declare width x height."""
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert ok
    jpeg = bytearray(data.tobytes())
    pos = jpeg.index(b"\xff\xc0")
    jpeg[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def write_video(path: Path, width: int, height: int, frames: int, fps: int = 25) -> Path:
    """An H.264 MP4 of `frames` grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), (i * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def playlist_naming(target: str) -> bytes:
    """An HLS playlist whose one segment is a file on the server."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n"
        f"{target}\n#EXT-X-ENDLIST\n"
    ).encode()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (up to 2**31 - 1 a side) over one row of
    compressed data: a bomb as its header tells it, a few dozen bytes on the wire."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)))
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")
    )
