"""Untrusted media, checked before any pixel is decoded: the format from its magic bytes (an
allow-list) and the dimensions from its header (PNG IHDR, JPEG SOF), so a decompression bomb
of a few hundred KiB is refused by what it declares, never decoded.

Videos are allowed as MP4/MOV, Matroska/WebM and AVI only, sniffed here and then opened with
that demuxer forced: no playlist (HLS), concat list or other demuxer that opens further files
or URLs can ever run on an upload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ImageFormat = Literal["png", "jpeg"]
# The PyAV (FFmpeg) demuxer each allowed container is opened with.
VideoFormat = Literal["mov", "matroska", "avi"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOFs.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
# MP4/MOV top-level atoms a file may start with.
_MOV_ATOMS = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


class MediaError(ValueError):
    """Media refused before decoding: `status` is the HTTP answer (413 over a limit, 415 not
    an allowed format); the message names the limit and its setting, never a server path."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageHeader:
    format: ImageFormat
    width: int
    height: int


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int
    max_video_seconds: float
    max_video_frames: int

    def check_pixels(self, width: int, height: int, what: str) -> None:
        if width * height > self.max_pixels:
            raise MediaError(
                413,
                f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.max_pixels} (PTQ4VM_MAX_PIXELS)",
            )

    def check_video(
        self, width: int, height: int, seconds: float | None, frames: int | None
    ) -> None:
        self.check_pixels(width, height, "the video")
        if seconds is not None and seconds > self.max_video_seconds:
            raise MediaError(
                413,
                f"the video lasts {seconds:.1f} s, over the limit of "
                f"{self.max_video_seconds:g} s (PTQ4VM_MAX_VIDEO_SECONDS)",
            )
        if frames is not None and frames > self.max_video_frames:
            raise MediaError(
                413,
                f"the video has {frames} frames, over the limit of {self.max_video_frames} "
                "(PTQ4VM_MAX_VIDEO_FRAMES)",
            )


def image_header(data: bytes) -> ImageHeader:
    """The format and size a PNG or JPEG declares; MediaError(415) for anything else."""
    if data.startswith(_PNG_MAGIC):
        # The first chunk must be IHDR: length 13, type, width, height (big-endian).
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            if width > 0 and height > 0:
                return ImageHeader("png", width, height)
        raise MediaError(415, "a PNG without a valid IHDR header")
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    raise MediaError(415, "not a PNG or JPEG image (only those two formats are accepted)")


def _jpeg_header(data: bytes) -> ImageHeader:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if width > 0 and height > 0:
                return ImageHeader("jpeg", width, height)
            break
        pos += 2 + length
    raise MediaError(415, "a JPEG without a valid frame header")


def sniff_video(head: bytes) -> VideoFormat:
    """The allowed container `head` (the first bytes of a file) starts; MediaError(415)."""
    if head[4:8] in _MOV_ATOMS:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    raise MediaError(
        415, "not an MP4/MOV, Matroska/WebM or AVI file (only those containers are accepted)"
    )


def sniff_video_file(path: Path) -> VideoFormat:
    with path.open("rb") as f:
        return sniff_video(f.read(16))
