"""Decoding of matting inputs: video files and directories of image frames.

This module also defines the error types and :class:`VideoInfo` shared by the whole
``ptq4vm_core.io`` package; import them from :mod:`ptq4vm_core.io.video`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

logger = logging.getLogger(__name__)

#: Extensions (lower case) that :func:`open_writer` treats as a video container.
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mkv", ".mov", ".webm", ".avi"})
#: Extensions (lower case) of the frames that a frame directory may hold.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
#: Frame rate reported for a frame directory when the caller gives none.
DEFAULT_FRAME_DIR_FPS = Fraction(25)


class VideoError(Exception):
    """Base class of the video reading and writing errors."""


class VideoReadError(VideoError):
    """An input is missing, unreadable or inconsistent."""


class VideoWriteError(VideoError):
    """An output cannot be created, or a frame handed to a writer is invalid."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about an input without decoding it all.

    ``fps`` of a frame directory is the rate the caller passed to :func:`probe`
    (25 by default). ``frame_count`` is exact for frame directories and for
    containers that index their frames (MP4, MOV, AVI); it is ``None`` where only
    decoding would tell (MKV, WebM).
    """

    width: int
    height: int
    fps: Fraction
    frame_count: int | None
    has_audio: bool
    path: Path


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"input not found: {path}")


def list_frame_files(directory: Path) -> list[Path]:
    """Image files of a frame directory in plain ``sorted()`` name order.

    Hidden files are skipped because macOS (``._0001.png``) and some sync tools
    drop undecodable companions next to real frames.

    Raises:
        VideoReadError: ``directory`` holds no PNG/JPG/JPEG file.
    """
    try:
        frames = sorted(
            p
            for p in directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
    except OSError as exc:
        raise VideoReadError(f"cannot list frame directory {directory}: {exc}") from exc
    if not frames:
        raise VideoReadError(
            f"frame directory {directory} holds no .png/.jpg/.jpeg images; "
            "pass a video file or a directory of image frames"
        )
    return frames


def _imread(path: Path, flags: int) -> npt.NDArray[Any]:
    # np.fromfile + imdecode instead of cv2.imread: imread cannot open non-ASCII
    # paths on Windows and returns None without saying why.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise VideoReadError(f"cannot read image {path}: {exc}") from exc
    image = cv2.imdecode(data, flags)
    if image is None:
        raise VideoReadError(f"cannot decode image {path}: not a valid PNG/JPEG file")
    return np.asarray(image)


def _read_rgb_image(path: Path) -> npt.NDArray[np.uint8]:
    # IMREAD_COLOR_RGB turns grey, 16-bit and RGBA images into 8-bit RGB, contiguous.
    return _imread(path, cv2.IMREAD_COLOR_RGB)


def _to_8bit(image: npt.NDArray[Any], path: Path) -> npt.NDArray[np.uint8]:
    if image.dtype == np.uint8:
        return image.astype(np.uint8, copy=False)
    if image.dtype == np.uint16:
        # 65535 / 255 == 257 exactly, so this maps 16-bit white to 255.
        return np.rint(image / 257.0).astype(np.uint8)
    raise VideoReadError(f"image {path} has unsupported sample type {image.dtype}")


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"cannot decode video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"cannot decode video {path}: it has no video stream")
    return container


def probe(path: str | Path, *, frame_dir_fps: Fraction = DEFAULT_FRAME_DIR_FPS) -> VideoInfo:
    """Describe a video file or a directory of PNG/JPG/JPEG frames.

    Args:
        path: A file PyAV can decode, or a directory of image frames.
        frame_dir_fps: Rate reported for a frame directory (it stores none).

    Raises:
        VideoReadError: ``path`` is missing, is a directory without images, or is a
            file PyAV cannot open or that has no video stream.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        frames = list_frame_files(path)
        height, width = _read_rgb_image(frames[0]).shape[:2]
        return VideoInfo(
            width=width,
            height=height,
            fps=Fraction(frame_dir_fps),
            frame_count=len(frames),
            has_audio=False,
            path=path,
        )
    with _open_container(path) as container:
        stream = container.streams.video[0]
        fps = stream.guessed_rate or stream.average_rate or stream.base_rate
        if not fps:
            logger.warning("%s declares no frame rate; assuming %s fps", path, frame_dir_fps)
            fps = frame_dir_fps
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=Fraction(fps),
            frame_count=stream.frames if stream.frames > 0 else None,
            has_audio=bool(container.streams.audio),
            path=path,
        )


_ImageReader = Callable[[Path], npt.NDArray[np.uint8]]


def _iter_dir(frames: list[Path], read: _ImageReader, what: str) -> Iterator[npt.NDArray[np.uint8]]:
    first_shape: tuple[int, ...] | None = None
    first_name = ""
    for frame_path in frames:
        frame = read(frame_path)
        if first_shape is None:
            first_shape, first_name = frame.shape[:2], frame_path.name
        elif frame.shape[:2] != first_shape:
            raise VideoReadError(
                f"{what} {frame_path} is {frame.shape[1]}x{frame.shape[0]} but "
                f"{first_name} is {first_shape[1]}x{first_shape[0]}; "
                "all frames of a directory must have the same size"
            )
        yield frame


def _iter_decoded(
    container: av.container.InputContainer, path: Path, fmt: str
) -> Iterator[npt.NDArray[np.uint8]]:
    with container:
        stream = container.streams.video[0]
        # Frame-parallel decoding; PyAV still returns frames in presentation order.
        stream.thread_type = "AUTO"
        # Reused so swscale's context is built once, not per frame as to_ndarray(format=) does.
        reformatter = VideoReformatter()
        try:
            for frame in container.decode(stream):
                converted = reformatter.reformat(frame, format=fmt)
                yield np.asarray(converted.to_ndarray(), dtype=np.uint8)
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"cannot decode video {path}: {exc}") from exc


def iter_frames(path: str | Path) -> Iterator[npt.NDArray[np.uint8]]:
    """Yield the frames of a video file or frame directory, in order.

    Yields:
        ``[H, W, 3]`` uint8 RGB arrays.

    Raises:
        VideoReadError: as :func:`probe`, or when a frame cannot be decoded, or when
            the images of a directory differ in size (the message names the file).
    """
    return _frames(Path(path), _read_rgb_image, "frame", "rgb24")


def _frames(
    path: Path, read_image: _ImageReader, what: str, pixels: str
) -> Iterator[npt.NDArray[np.uint8]]:
    """A frame directory's images read by `read_image`, or a video decoded as `pixels`."""
    _check_exists(path)
    if path.is_dir():
        return _iter_dir(list_frame_files(path), read_image, what)
    return _iter_decoded(_open_container(path), path, pixels)


def _read_alpha_image(path: Path) -> npt.NDArray[np.uint8]:
    image = _to_8bit(_imread(path, cv2.IMREAD_UNCHANGED), path)
    if image.ndim == 3:
        # OpenCV stores colour as BGR(A); the RGB "first channel" is index 2.
        image = image[..., 2 if image.shape[2] >= 3 else 0]
    return np.ascontiguousarray(image)


def read_alpha_frames(path: str | Path) -> Iterator[npt.NDArray[np.uint8]]:
    """Yield ground-truth alpha mattes (e.g. a ``pha/`` directory), in order.

    Greyscale images are used as they are; colour images contribute their first (red)
    channel; 16-bit images are scaled to 8 bits. For a video file the decoded luma is
    used, which is how :func:`open_writer` stores ``kind="alpha"``.

    Yields:
        ``[H, W]`` uint8 arrays, 255 = opaque foreground.

    Raises:
        VideoReadError: as :func:`iter_frames`.
    """
    return _frames(Path(path), _read_alpha_image, "alpha frame", "gray")


def _read_rgba_image(path: Path) -> npt.NDArray[np.uint8]:
    image = _to_8bit(_imread(path, cv2.IMREAD_UNCHANGED), path)
    if image.ndim == 2:
        conversion = cv2.COLOR_GRAY2RGBA
    else:
        conversion = cv2.COLOR_BGR2RGBA if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    return np.asarray(cv2.cvtColor(image, conversion), dtype=np.uint8)


def _iter_vp9_alpha(
    container: av.container.InputContainer, path: Path
) -> Iterator[npt.NDArray[np.uint8]]:
    with container:
        stream = container.streams.video[0]
        decoder = av.codec.CodecContext.create("libvpx-vp9", "r")
        try:
            for packet in container.demux(stream):
                for frame in decoder.decode(packet):
                    yield np.asarray(frame.to_ndarray(format="rgba"), dtype=np.uint8)
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"cannot decode video {path}: {exc}") from exc


def iter_rgba_frames(path: str | Path) -> Iterator[npt.NDArray[np.uint8]]:
    """Yield frames with their alpha channel (WebM VP9 alpha, ProRes 4444, RGBA PNG).

    Inputs without alpha come back fully opaque (alpha 255).

    Yields:
        ``[H, W, 4]`` uint8 RGBA arrays.

    Raises:
        VideoReadError: as :func:`iter_frames`.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return _iter_dir(list_frame_files(path), _read_rgba_image, "frame")
    container = _open_container(path)
    stream = container.streams.video[0]
    # FFmpeg's native VP9 decoder drops the alpha plane that WebM carries as block
    # side data; only the libvpx decoder reassembles yuva420p.
    if stream.codec_context.name == "vp9" and stream.metadata.get("alpha_mode") == "1":
        return _iter_vp9_alpha(container, path)
    return _iter_decoded(container, path, "rgba")
