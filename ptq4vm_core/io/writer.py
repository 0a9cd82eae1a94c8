"""Atomic output of matting results: PNG frame directories and video containers.

Every writer stages its output next to the destination (a hidden ``.NAME.*.partial``
file or directory) and moves it into place only when :meth:`FrameWriter.close`
succeeds, so readers never see a half-written result and a failed run leaves
nothing behind.

Past 400 lines because the PNG-directory writer, the container writer and the codec choice
share the staging and validation of `FrameWriter`: split apart, each would read the others to
be understood (the audio they carry is in `io.audio`).
"""

from __future__ import annotations

import abc
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import av
import av.error
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    VideoReformatter,
)
from av.video.stream import VideoStream

from ptq4vm_core.io.audio import AudioCopier, open_audio_source
from ptq4vm_core.io.reader import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoWriteError,
)

logger = logging.getLogger(__name__)

Kind = Literal["alpha", "rgb", "rgba"]
_CHANNELS: dict[str, int] = {"alpha": 1, "rgb": 3, "rgba": 4}

#: Minimum digits of frame file names; widened at close when more frames were written.
PNG_INDEX_DIGITS = 4
_FRAME_NAME_RE = re.compile(r"\d+\.png")
# PNGs written in real time (frame dumps, the stream's mattes): zlib level 1 and one fixed row
# filter (Up). OpenCV's default picks a filter per row by trying each, which costs three times
# the encode (7.6 against 2.5 ms for a 1280x720 matte) for files within a few percent in size.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_UP,
]
# A matte is mostly runs of 0 and 255, rows much like the row above: zlib's run-length
# strategy finds those matches alone, a little faster and 15 % smaller than the default
# (1280x720 mattes of the sample clip: 2.95 against 3.06 ms, 51.7 against 60.9 kB).
_MATTE_PNG_PARAMS = [*_PNG_PARAMS, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def encode_png(image: npt.NDArray[Any]) -> bytes:
    """[H,W] grey or [H,W,3|4] BGR(A) uint8 -> PNG bytes, encoded for speed (lossless)."""
    ok, data = cv2.imencode(".png", image, _MATTE_PNG_PARAMS if image.ndim == 2 else _PNG_PARAMS)
    if not ok:
        raise OSError("PNG encoding failed")
    return bytes(data.data)


_MUXERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}


@dataclass(frozen=True)
class _VideoCodec:
    name: str
    pix_fmt: str
    options: dict[str, str]
    # libx264 rejects odd sizes in 4:2:0; such frames get one replicated edge pixel.
    even_size: bool


_H264_OPTIONS = {"crf": "18", "preset": "veryfast"}
# Constant quality (b=0 + crf); cpu-used 5 gives up a little compression for speed
# (about 10 fps at 1080p on two cores, against under 3 fps at the defaults).
_VP9_OPTIONS = {"crf": "24", "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}
_PRORES_OPTIONS = {"profile": "4444", "vendor": "apl0"}


def _video_codec(path: Path, ext: str, kind: Kind) -> _VideoCodec:
    if ext == ".webm" or (ext == ".mkv" and kind == "rgba"):
        # yuva420p makes libvpx encode alpha as a second plane; Matroska keeps it.
        pix_fmt = "yuva420p" if kind == "rgba" else "yuv420p"
        return _VideoCodec("libvpx-vp9", pix_fmt, _VP9_OPTIONS, even_size=False)
    if ext == ".mov":
        pix_fmt = "yuva444p10le" if kind == "rgba" else "yuv444p10le"
        return _VideoCodec("prores_ks", pix_fmt, _PRORES_OPTIONS, even_size=False)
    if kind == "rgba":
        raise VideoWriteError(
            f"cannot write RGBA to {path}: H.264 in {ext} has no alpha channel; "
            "use .webm or .mkv (VP9 with alpha) or .mov (ProRes 4444)"
        )
    return _VideoCodec("libx264", "yuv420p", _H264_OPTIONS, even_size=True)


def _staging_path(path: Path) -> Path:
    # Same directory as the destination so os.replace never crosses filesystems.
    # A uuid name, not mkstemp/mkdtemp: those create 0600/0700 entries, which would
    # become the final permissions instead of the umask's.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")


class FrameWriter(abc.ABC):
    """Sink for matting output frames; a context manager.

    Leaving the ``with`` block normally publishes the output; leaving it through an
    exception discards it. Without ``with``, call :meth:`close` or :meth:`abort`.
    """

    def __init__(self, path: Path, kind: Kind, width: int, height: int) -> None:
        self.path = path
        self.kind: Kind = kind
        self.width = width
        self.height = height
        self.frames_written = 0
        self._closed = False

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self.abort()

    def _validate(self, frame: Any) -> npt.NDArray[np.uint8]:
        channels = _CHANNELS[self.kind]
        size = (self.height, self.width)
        expected = size if channels == 1 else (*size, channels)
        if not isinstance(frame, np.ndarray):
            raise VideoWriteError(
                f"{self.kind} frame for {self.path} must be a numpy uint8 array of shape "
                f"{expected}, got {type(frame).__name__}"
            )
        shape_ok = frame.shape == expected or (channels == 1 and frame.shape == (*size, 1))
        if not shape_ok or frame.dtype != np.uint8:
            hint = ""
            if np.issubdtype(frame.dtype, np.floating):
                hint = " (convert float [0, 1] images with to_uint8())"
            raise VideoWriteError(
                f"{self.kind} frame for {self.path} must be a uint8 array of shape "
                f"{expected}, got {frame.dtype} array of shape {frame.shape}{hint}"
            )
        return np.ascontiguousarray(frame.reshape(expected))

    def write(self, frame: npt.NDArray[np.uint8]) -> None:
        """Append one frame.

        Args:
            frame: uint8; ``[H, W]`` or ``[H, W, 1]`` for ``alpha``, ``[H, W, 3]`` RGB
                for ``rgb``, ``[H, W, 4]`` RGBA for ``rgba``, with the writer's size.

        Raises:
            VideoWriteError: the writer is closed, the frame has the wrong shape or
                dtype (nothing is written), or encoding/writing fails.
        """
        if self._closed:
            raise VideoWriteError(f"writer for {self.path} is already closed")
        array = self._validate(frame)
        try:
            self._write(array)
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoWriteError(
                f"cannot write frame {self.frames_written} to {self.path}: {exc}"
            ) from exc
        self.frames_written += 1

    def close(self) -> None:
        """Finish the output and move it to :attr:`path`; a no-op when closed.

        Raises:
            VideoWriteError: no frame was written, or finishing failed; in both
                cases the staged output is removed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.frames_written == 0:
                raise VideoWriteError(f"no frames were written to {self.path}; nothing saved")
            self._finish()
        except BaseException as exc:
            self._discard()
            if isinstance(exc, av.error.FFmpegError | OSError):
                raise VideoWriteError(f"cannot finish {self.path}: {exc}") from exc
            raise
        logger.info("wrote %d %s frames to %s", self.frames_written, self.kind, self.path)

    def abort(self) -> None:
        """Discard everything written so far; a no-op when closed."""
        if not self._closed:
            self._closed = True
            self._discard()
            logger.info("discarded unfinished output %s", self.path)

    @abc.abstractmethod
    def _write(self, frame: npt.NDArray[np.uint8]) -> None: ...

    @abc.abstractmethod
    def _finish(self) -> None: ...

    @abc.abstractmethod
    def _discard(self) -> None: ...


def _check_frame_dir_target(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise VideoWriteError(f"output {path} exists and is not a directory")
    if path.is_dir():
        foreign = [p.name for p in path.iterdir() if not _FRAME_NAME_RE.fullmatch(p.name)]
        if foreign:
            # Replacing the directory would delete these; refuse rather than guess.
            raise VideoWriteError(
                f"output directory {path} holds files other than numbered PNG frames "
                f"(e.g. {sorted(foreign)[0]!r}); choose a new or empty directory"
            )


class _PngDirWriter(FrameWriter):
    def __init__(self, path: Path, kind: Kind, width: int, height: int) -> None:
        super().__init__(path, kind, width, height)
        _check_frame_dir_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = _staging_path(path)
        self._staging.mkdir()

    def _write(self, frame: npt.NDArray[np.uint8]) -> None:
        # OpenCV encodes BGR(A) channel order.
        conversion = {"rgb": cv2.COLOR_RGB2BGR, "rgba": cv2.COLOR_RGBA2BGRA}.get(self.kind)
        image = frame if conversion is None else cv2.cvtColor(frame, conversion)
        name = f"{self.frames_written:0{PNG_INDEX_DIGITS}d}.png"
        (self._staging / name).write_bytes(encode_png(image))

    def _finish(self) -> None:
        digits = max(PNG_INDEX_DIGITS, len(str(self.frames_written - 1)))
        if digits > PNG_INDEX_DIGITS:
            # Equal-width names keep plain sorted() in frame order.
            for index in range(10 ** (digits - 1)):
                old = self._staging / f"{index:0{PNG_INDEX_DIGITS}d}.png"
                old.rename(self._staging / f"{index:0{digits}d}.png")
        _check_frame_dir_target(self.path)
        if not self.path.exists():
            os.replace(self._staging, self.path)
            return
        previous = _staging_path(self.path)
        os.replace(self.path, previous)
        try:
            os.replace(self._staging, self.path)
        except OSError:
            os.replace(previous, self.path)
            raise
        shutil.rmtree(previous, ignore_errors=True)

    def _discard(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)


class _ContainerWriter(FrameWriter):
    def __init__(
        self,
        path: Path,
        kind: Kind,
        width: int,
        height: int,
        fps: Fraction,
        audio_from: Path | None,
    ) -> None:
        super().__init__(path, kind, width, height)
        ext = path.suffix.lower()
        codec = _video_codec(path, ext, kind)
        if path.is_dir():
            raise VideoWriteError(f"output {path} is a directory; remove it or pick a file name")
        self._pad = (height % 2, width % 2) if codec.even_size else (0, 0)
        if any(self._pad):
            logger.info(
                "%s: H.264 needs even sizes; padding %dx%d to %dx%d by repeating the edge",
                path, width, height, width + self._pad[1], height + self._pad[0],
            )  # fmt: skip
        self._fps = fps
        self._pix_fmt = codec.pix_fmt
        self._audio: AudioCopier | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = _staging_path(path).with_suffix(f".partial{ext}")
        # One converter for the whole clip: it caches the swscale context, which
        # a per-frame VideoFrame.reformat() would rebuild every time.
        self._reformatter = VideoReformatter()
        # faststart moves the index to the front so HTTP clients can play progressively.
        options = {"movflags": "+faststart"} if ext in (".mp4", ".mov") else {}
        try:
            self._container = av.open(str(self._staging), "w", format=_MUXERS[ext], options=options)
        except (av.error.FFmpegError, OSError) as exc:
            self._staging.unlink(missing_ok=True)
            raise VideoWriteError(f"cannot create {path}: {exc}") from exc
        try:
            stream = self._container.add_stream(codec.name, rate=fps, options=codec.options)
            if not isinstance(stream, VideoStream):
                raise VideoWriteError(f"{codec.name} is not a video encoder")
            stream.width = width + self._pad[1]
            stream.height = height + self._pad[0]
            stream.pix_fmt = codec.pix_fmt
            stream.time_base = 1 / fps
            ctx = stream.codec_context
            ctx.time_base = 1 / fps
            ctx.thread_count = 0  # let the encoder pick, the API default is one thread
            # Tag what _to_video_frame converts with, so players do not guess BT.601.
            ctx.colorspace = 1  # AVCOL_SPC_BT709
            ctx.color_primaries = ColorPrimaries.BT709
            ctx.color_trc = ColorTrc.BT709
            ctx.color_range = ColorRange.MPEG
            self._stream = stream
            source = open_audio_source(audio_from)
            if source is not None:
                try:
                    self._audio = AudioCopier(source, self._container, ext)
                except BaseException:
                    source.close()
                    raise
        except BaseException as exc:
            self._discard()
            if isinstance(exc, av.error.FFmpegError):
                raise VideoWriteError(f"cannot create {path}: {exc}") from exc
            raise

    def _to_video_frame(self, frame: npt.NDArray[np.uint8]) -> av.VideoFrame:
        if any(self._pad):
            frame = np.asarray(
                cv2.copyMakeBorder(frame, 0, self._pad[0], 0, self._pad[1], cv2.BORDER_REPLICATE),
                dtype=np.uint8,
            )
        src_fmt = {"alpha": "gray", "rgb": "rgb24", "rgba": "rgba"}[self.kind]
        source = av.VideoFrame.from_ndarray(frame, format=src_fmt)
        # Grey maps to luma only (limited range, neutral chroma), so "alpha" videos
        # read back with read_alpha_frames() or as plain grey video.
        return self._reformatter.reformat(
            source,
            format=self._pix_fmt,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
        )

    def _write(self, frame: npt.NDArray[np.uint8]) -> None:
        video_frame = self._to_video_frame(frame)
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self._fps
        self._container.mux(self._stream.encode(video_frame))
        if self._audio is not None:
            self._audio.pump(self._container, float((self.frames_written + 1) / self._fps))

    def _finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        if self._audio is not None:
            self._audio.pump(self._container, None)
            self._audio.close()
        self._container.close()
        os.replace(self._staging, self.path)

    def _discard(self) -> None:
        for closeable in (self._audio, self._container):
            try:
                if closeable is not None:
                    closeable.close()
            except (av.error.FFmpegError, OSError) as exc:
                logger.debug("ignoring error while discarding %s: %s", self.path, exc)
        self._staging.unlink(missing_ok=True)


def open_writer(
    path: str | Path,
    kind: Kind,
    *,
    width: int,
    height: int,
    fps: Fraction,
    audio_from: str | Path | None = None,
) -> FrameWriter:
    """Open an atomic writer for ``width`` x ``height`` frames of ``kind``.

    The extension of ``path`` picks the output:

    * none of .mp4 .mkv .mov .webm .avi: a directory of ``0000.png``, ``0001.png``, ...
      (wider names when more than 10000 frames), 8-bit grey/RGB/RGBA by ``kind``.
      An existing directory is replaced if it holds only numbered PNGs.
    * ``.mp4`` ``.mkv`` ``.avi``: H.264 (libx264, yuv420p, crf 18, veryfast). Odd
      sizes are padded by one replicated edge pixel to even, so the video is one
      pixel wider/taller than the frames. ``rgba`` in ``.mkv`` uses VP9 with alpha.
    * ``.webm``: VP9 (libvpx-vp9); ``rgba`` keeps alpha (yuva420p).
    * ``.mov``: ProRes 4444 (prores_ks, 10-bit; yuva444p10le for ``rgba``).

    Colour video is BT.709 limited range and tagged so. ``alpha`` video stores alpha
    as luma of grey video. ``audio_from`` adds the first audio stream of that input
    to container outputs (copied when the container accepts its codec, else AAC, or
    Opus for WebM); it is ignored for frame directories and silent inputs.

    Raises:
        VideoWriteError: bad kind/size/fps, ``rgba`` to .mp4/.avi, or the
            destination cannot be created.
        VideoReadError: ``audio_from`` is missing or cannot be opened.
    """
    path = Path(path)
    if kind not in _CHANNELS:
        raise VideoWriteError(f"kind must be one of {get_args(Kind)}, got {kind!r}")
    if width <= 0 or height <= 0:
        raise VideoWriteError(f"output size must be positive, got {width}x{height}")
    if fps <= 0:
        raise VideoWriteError(f"fps must be positive, got {fps}")
    # Bounded denominator: a float such as 29.97 becomes 2997/100, not a 2**-52 fraction.
    fps = Fraction(fps).limit_denominator(1_000_000)
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        audio_path = None if audio_from is None else Path(audio_from)
        return _ContainerWriter(path, kind, width, height, fps, audio_path)
    if ext in IMAGE_EXTENSIONS:
        raise VideoWriteError(
            f"output {path} looks like a single image; frames are written to a "
            "directory, so give a path without an image extension"
        )
    return _PngDirWriter(path, kind, width, height)
