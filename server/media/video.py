"""Uploaded videos decoded in a child process (server/media/video_child.py), never in the server.

`probe_upload` checks an upload (allowed container, limits from its metadata, a first frame
that decodes) and `VideoSource` streams its frames to a job; `kill()` ends the child, which is
how a job is cancelled. A decoder that crashes fails that one job: live sessions never notice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from server.media.sniff import MediaError, MediaLimits, sniff_video_file


class DecoderError(RuntimeError):
    """The decoder child failed or was killed after the video was accepted."""


@dataclass(frozen=True)
class VideoMeta:
    width: int
    height: int
    fps: Fraction
    frames: int | None
    seconds: float | None
    audio: bool


def _command(path: Path, limits: MediaLimits, probe: bool, nice: int = 0) -> list[str]:
    fmt = sniff_video_file(path)
    command = [
        sys.executable,
        "-m",
        "server.media.video_child",
        str(os.getpid()),
        str(nice),
        fmt,
        str(path.resolve()),
        str(limits.max_pixels),
        repr(limits.max_video_seconds),
        str(limits.max_video_frames),
    ]
    return [*command, "probe"] if probe else command


def _parse_header(line: bytes) -> VideoMeta:
    if not line.strip():
        raise MediaError(415, "the decoder could not read it")
    obj = json.loads(line)
    if "error" in obj:
        raise MediaError(int(obj["status"]), str(obj["error"]))
    return VideoMeta(
        width=int(obj["width"]),
        height=int(obj["height"]),
        fps=Fraction(*obj["fps"]),
        frames=obj["frames"],
        seconds=obj["seconds"],
        audio=bool(obj["audio"]),
    )


def probe_upload(
    path: Path, limits: MediaLimits, *, nice: int = 10, timeout_s: float = 60.0
) -> VideoMeta:
    """The metadata of an uploaded video after its first frame decoded in a child at niceness
    `nice` (its start-up must not take the sessions' CPU); raises MediaError (413 over a
    limit, 415 not an allowed or decodable video)."""
    proc = subprocess.run(
        _command(path, limits, probe=True, nice=nice),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0 and not proc.stdout:
        raise MediaError(415, f"the decoder failed on it (exit {proc.returncode})")
    return _parse_header(proc.stdout.split(b"\n", 1)[0])


class VideoSource:
    """The frames of an accepted upload, decoded by a child at niceness `nice`."""

    def __init__(self, path: Path, limits: MediaLimits, *, nice: int = 0) -> None:
        # A file, not a pipe, for stderr: FFmpeg's warnings must never block the child.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            _command(path, limits, probe=False, nice=nice),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._killed = threading.Event()
        assert self._proc.stdout is not None
        try:
            self.meta = _parse_header(self._proc.stdout.readline())
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def frames(self) -> Iterator[NDArray[np.uint8]]:
        """[H,W,3] uint8 RGB frames in order; DecoderError when the child fails or dies."""
        assert self._proc.stdout is not None
        size = self.meta.width * self.meta.height * 3
        shape = (self.meta.height, self.meta.width, 3)
        while True:
            data = self._proc.stdout.read(size)
            if len(data) < size:
                break
            yield np.frombuffer(data, np.uint8).reshape(shape)
        code = self._proc.wait()
        if self._killed.is_set():
            raise DecoderError("the job was cancelled")
        if code != 0 or data:
            raise DecoderError(self._failure(code))

    def _failure(self, code: int) -> str:
        self._stderr.seek(0)
        reason = self._stderr.read(4000).decode(errors="replace").strip().splitlines()
        if code < 0:
            return f"the video decoder died (signal {-code})"
        return reason[-1] if reason else f"the video decoder failed (exit {code})"

    def kill(self) -> None:
        self._killed.set()
        if self._proc.poll() is None:
            self._proc.kill()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
