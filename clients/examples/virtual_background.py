"""Virtual background for a conferencing backend: camera or video in, composite video out.

    python clients/examples/virtual_background.py --camera 0 --url ws://127.0.0.1:8000/v1/stream \\
        --background "#204080" --out call.mp4 --seconds 30
    python clients/examples/virtual_background.py --video talk.mp4 --background beach.jpg \\
        --out talk-bg.mp4

Frames go to the server through the Python client (`ptq4vm_client`) with two frames in
flight, so capture, network and inference overlap; when the server falls behind it drops
frames (the output repeats the last composite rather than lagging). Needs opencv-python
(camera, colour/image background) and PyAV (the output video), both installed with the
service. Prints the achieved fps once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import cv2
import numpy as np
from numpy.typing import NDArray
from ptq4vm_client import AsyncStream, FrameError, MattesLostError, StreamEndedError

Image = NDArray[np.uint8]


def read_frames(source: str | int, seconds: float | None) -> tuple[Iterator[Image], float]:
    """RGB frames from a camera index or a video file, and the source's frame rate."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {'camera' if isinstance(source, int) else 'video'} {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0

    def frames() -> Iterator[Image]:
        start = time.monotonic()
        try:
            while seconds is None or time.monotonic() - start < seconds:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[..., ::-1])
        finally:
            capture.release()

    return frames(), fps


def make_background(spec: str, width: int, height: int) -> Image:
    """`#RRGGBB`, `R,G,B` or an image path, as a `[H,W,3]` uint8 RGB background."""
    if spec.startswith("#") and len(spec) == 7:
        colour = [int(spec[i : i + 2], 16) for i in (1, 3, 5)]
    elif spec.count(",") == 2:
        colour = [int(v) for v in spec.split(",")]
    else:
        bgr = cv2.imread(spec, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"--background {spec!r} is neither a colour nor a readable image")
        return np.ascontiguousarray(cv2.resize(bgr, (width, height))[..., ::-1])
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def composite(frame: Image, alpha: NDArray[np.uint8], background: Image) -> Image:
    a = alpha[..., None].astype(np.float32) / 255.0
    return (frame * a + background * (1.0 - a) + 0.5).astype(np.uint8)


async def run(args: argparse.Namespace) -> None:
    source: str | int = args.camera if args.camera is not None else args.video
    frames, fps = read_frames(source, args.seconds)
    first = next(frames, None)
    if first is None:
        raise SystemExit("the source gave no frame")
    height, width = first.shape[:2]
    background = make_background(args.background, width, height)
    container = av.open(args.out, "w")
    video = container.add_stream("libx264", rate=Fraction(round(fps * 1000), 1000))
    video.width, video.height = width - width % 2, height - height % 2
    video.pix_fmt = "yuv420p"
    # Frames are kept until their matte returns (at most `window` of them).
    pending: dict[int, Image] = {}
    shown = first
    count, written, tick, since = 0, 0, time.monotonic(), 0

    def write(image: Image) -> None:
        nonlocal written
        written += 1
        frame = av.VideoFrame.from_ndarray(image[: video.height, : video.width], format="rgb24")
        for packet in video.encode(frame):
            container.mux(packet)

    async with AsyncStream(
        args.url, width=width, height=height, input="jpeg", window=args.window
    ) as stream:

        async def produce() -> None:
            frame: Image | None = first
            while frame is not None:
                data = await asyncio.to_thread(stream.encode, frame)
                seq = await stream.send(data)
                pending[seq] = frame
                frame = await asyncio.to_thread(next, frames, None)
            await stream.stop()

        producer = asyncio.create_task(produce())
        while True:
            try:
                matte = await stream.recv()
            except (FrameError, MattesLostError):
                continue
            except StreamEndedError:
                break
            frame = pending.pop(matte.seq, None)
            for seq in matte.dropped:
                pending.pop(seq, None)
                write(shown)  # keep the output's timing: repeat what was last shown
            if frame is None:
                continue
            shown = composite(frame, matte.alpha, background)
            write(shown)
            count += 1
            if (now := time.monotonic()) - tick >= 1.0:
                print(f"{(count - since) / (now - tick):5.1f} fps, model {matte.model}", flush=True)
                tick, since = now, count
        await producer
    for packet in video.encode():
        container.mux(packet)
    container.close()
    print(f"{written} frames ({count} composited) written to {args.out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", type=int, help="camera index (OpenCV)")
    source.add_argument("--video", help="video file")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    parser.add_argument("--background", default="0,177,64", help="#RRGGBB, R,G,B or image")
    parser.add_argument("--out", required=True, help="output video (.mp4)")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--window", type=int, default=2, help="frames in flight")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
