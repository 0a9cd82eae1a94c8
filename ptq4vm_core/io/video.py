"""Public video I/O API of ptq4vm: read inputs, write results, composite.

Import from here; the implementation is split by concern into
:mod:`~ptq4vm_core.io.reader` (decoding, errors, :class:`VideoInfo`),
:mod:`~ptq4vm_core.io.writer` (atomic frame/video output) and
:mod:`~ptq4vm_core.io.compose` (backgrounds and alpha compositing).
"""

from __future__ import annotations

from ptq4vm_core.io.compose import NAMED_COLOURS, composite, parse_background, to_uint8
from ptq4vm_core.io.reader import (
    DEFAULT_FRAME_DIR_FPS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoError,
    VideoInfo,
    VideoReadError,
    VideoWriteError,
    iter_frames,
    iter_rgba_frames,
    probe,
    read_alpha_frames,
)
from ptq4vm_core.io.writer import FrameWriter, Kind, open_writer

__all__ = [
    "DEFAULT_FRAME_DIR_FPS",
    "IMAGE_EXTENSIONS",
    "NAMED_COLOURS",
    "VIDEO_EXTENSIONS",
    "FrameWriter",
    "Kind",
    "VideoError",
    "VideoInfo",
    "VideoReadError",
    "VideoWriteError",
    "composite",
    "iter_frames",
    "iter_rgba_frames",
    "open_writer",
    "parse_background",
    "probe",
    "read_alpha_frames",
    "to_uint8",
]
