"""The input's audio carried into a container output (copied, or transcoded where the
container does not take its codec), interleaved with the video as it is written."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.audio.stream import AudioStream
from av.container import OutputContainer

from ptq4vm_core.io.reader import VideoReadError, VideoWriteError

logger = logging.getLogger(__name__)

# Audio codecs each container takes as they are; anything else is transcoded.
_AUDIO_REMUX: dict[str, frozenset[str]] = {
    ".mp4": frozenset({"aac", "mp3", "ac3", "eac3", "alac"}),
    ".mov": frozenset({"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"}),
    ".mkv": frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "vorbis", "flac"}),
    ".webm": frozenset({"opus", "vorbis"}),
    ".avi": frozenset({"mp3", "ac3", "aac", "pcm_s16le"}),
}
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000})


class AudioCopier:
    """Carries the first audio stream of an input into an output container.

    Packets are copied unchanged when the output container accepts the codec and
    transcoded otherwise; :meth:`pump` interleaves them with the video as it grows.
    """

    def __init__(self, source: av.container.InputContainer, out: OutputContainer, ext: str) -> None:
        self._source = source
        self._in = source.streams.audio[0]
        in_ctx = self._in.codec_context
        self._remux = in_ctx.name in _AUDIO_REMUX[ext]
        if self._remux:
            self._out = out.add_stream_from_template(self._in)
        else:
            codec = "libopus" if ext == ".webm" else "aac"
            # Opus encodes at 48 kHz (the encoder resamples); AAC keeps standard rates.
            rate = in_ctx.sample_rate if in_ctx.sample_rate in _AAC_RATES else 48000
            stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate)
            if not isinstance(stream, AudioStream):
                raise VideoWriteError(f"{codec} is not an audio encoder")
            self._out = stream
            # libopus otherwise falls back to 64 kb/s, audibly thin for stereo.
            self._out.bit_rate = 128_000
            # Mono/stereo suits every target encoder; wider layouts are downmixed.
            self._out.layout = "mono" if in_ctx.channels == 1 else "stereo"
            logger.info("transcoding audio %s -> %s", in_ctx.name, codec)
        # The writer's video starts at t=0; shift the audio by the source video's
        # start so the two stay in sync as they were in the source.
        video_start = Fraction(0)
        if source.streams.video:
            video = source.streams.video[0]
            if video.start_time is not None and video.time_base is not None:
                video_start = video.start_time * video.time_base
        in_time_base = self._in.time_base or Fraction(1, in_ctx.sample_rate or 1)
        self._time_base = in_time_base
        self._shift = round(video_start / in_time_base)
        self._packets = source.demux(self._in)
        self._pending: av.Packet[AudioStream] | None = None
        self._done = False

    def pump(self, container: OutputContainer, until_s: float | None) -> None:
        """Mux audio up to ``until_s`` seconds (all remaining audio when None)."""
        packet: av.Packet[AudioStream] | None
        while not self._done:
            if self._pending is not None:
                packet, self._pending = self._pending, None
            else:
                packet = next(self._packets, None)
            if packet is None:
                self._done = True
                break
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            ts = (packet.pts if packet.pts is not None else packet.dts) - self._shift
            if until_s is not None and float(ts * self._time_base) > until_s:
                self._pending = packet
                return
            packet.pts = None if packet.pts is None else packet.pts - self._shift
            packet.dts -= self._shift
            if self._remux:
                packet.stream = self._out
                container.mux(packet)
            else:
                for frame in self._in.codec_context.decode(packet):
                    container.mux(self._out.encode(frame))
        if not self._remux and until_s is None:
            for frame in self._in.codec_context.decode(None):
                container.mux(self._out.encode(frame))
            container.mux(self._out.encode(None))

    def close(self) -> None:
        self._source.close()


def open_audio_source(audio_from: Path | None) -> av.container.InputContainer | None:
    if audio_from is None or audio_from.is_dir():
        return None
    if not audio_from.exists():
        raise VideoReadError(f"input not found: {audio_from}")
    try:
        source = av.open(str(audio_from), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoReadError(f"cannot decode video {audio_from}: {exc}") from exc
    if not source.streams.audio:
        source.close()
        logger.debug("%s has no audio stream; output will be silent", audio_from)
        return None
    return source
