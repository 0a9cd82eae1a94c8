"""The decoder child (`python -m server.media.video_child`): one uploaded video, decoded in a
process of its own so that a crashing or runaway decoder (a hostile file) cannot take the
server down.

    python -m server.media.video_child PARENT NICE FORMAT PATH MAX_PIXELS MAX_SECONDS \
        MAX_FRAMES [probe]

The container is opened with its demuxer forced (server.media.sniff allow-list) and its metadata is
checked against the limits before a frame is decoded. The first stdout line is JSON: the
video's `width`, `height`, `fps` ([num, den]), `frames`, `seconds`, `audio`, or `error` and
`status` (413, 415). Then, unless `probe` (which only decodes the first frame), every frame as
WIDTH*HEIGHT*3 bytes of RGB rows. A failure after the header goes to stderr, exit code 2.
Imports stay light (no torch): this starts once per upload and per job.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from server.lifeline import exit_with_parent

# Address space of the child: a decoder that allocates without bound dies here, not the server.
MEMORY_LIMIT_BYTES = 4 << 30
EXIT_FAILED = 2


def _header(container: Any) -> dict[str, Any]:
    stream = container.streams.video[0]
    width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate or Fraction(25)
    fps = Fraction(rate)
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    frames = int(stream.frames) if stream.frames > 0 else None
    return {
        "width": width,
        "height": height,
        "fps": [fps.numerator, fps.denominator],
        "frames": frames,
        "seconds": seconds,
        "audio": bool(container.streams.audio),
    }


def _refusal(header: dict[str, Any], limits: tuple[int, float, int]) -> str | None:
    max_pixels, max_seconds, max_frames = limits
    width, height = header["width"], header["height"]
    if width <= 0 or height <= 0:
        return "the video stream declares no frame size"
    if width * height > max_pixels:
        return (
            f"the video is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (PTQ4VM_MAX_PIXELS)"
        )
    seconds = header["seconds"]
    if seconds is not None and seconds > max_seconds:
        return (
            f"the video lasts {seconds:.1f} s, over the limit of {max_seconds:g} s "
            "(PTQ4VM_MAX_VIDEO_SECONDS)"
        )
    fps = Fraction(*header["fps"])
    frames = header["frames"]
    if frames is None and seconds is not None:
        frames = int(seconds * fps)
    if frames is not None and frames > max_frames:
        return (
            f"the video has {frames} frames, over the limit of {max_frames} "
            "(PTQ4VM_MAX_VIDEO_FRAMES)"
        )
    return None


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


def main(argv: list[str]) -> int:
    parent, nice, fmt, path = int(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    limits = (int(argv[4]), float(argv[5]), int(argv[6]))
    probe_only = len(argv) > 7 and argv[7] == "probe"
    exit_with_parent(parent)
    if nice:
        os.nice(nice)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    try:
        # "file:" and a forced demuxer: no other protocol, no format that opens other files.
        container = av.open(f"file:{path}", mode="r", format=fmt)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        _emit({"error": f"cannot open it as {fmt}: {_reason(exc)}", "status": 415})
        return 0
    with container:
        if not container.streams.video:
            _emit({"error": "it has no video stream", "status": 415})
            return 0
        header = _header(container)
        refusal = _refusal(header, limits)
        if refusal is not None:
            _emit({"error": refusal, "status": 413})
            return 0
        return _decode(container, header, limits[2], probe_only)


def _decode(container: Any, header: dict[str, Any], max_frames: int, probe_only: bool) -> int:
    width, height = header["width"], header["height"]
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    out = sys.stdout.buffer
    count = 0
    try:
        for frame in container.decode(stream):
            if probe_only:
                _emit(header)
                return 0
            if count == 0:
                _emit(header)
            count += 1
            if count > max_frames:
                print(
                    f"the video has more than {max_frames} frames (PTQ4VM_MAX_VIDEO_FRAMES)",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            # Always the declared size: a stream that changes resolution midway is scaled back.
            rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            out.write(rgb.tobytes())
    except av.error.FFmpegError as exc:
        if count == 0:
            _emit({"error": f"cannot decode it: {_reason(exc)}", "status": 415})
            return 0
        print(f"cannot decode frame {count}: {_reason(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the server stopped reading (job cancelled)
        return 0
    if count == 0:
        _emit({"error": "the video has no frames", "status": 415})
    out.flush()
    return 0


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason without the file name it quotes (a server path)."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return type(exc).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
