"""Python client of the PTQ4VM matting service.

Streaming (WebSocket `/v1/stream`, DESIGN 4.3)::

    from ptq4vm_client import Stream
    with Stream("ws://127.0.0.1:8000/v1/stream", width=640, height=360) as stream:
        for frame in frames:                 # [360,640,3] uint8 RGB
            matte = stream.matte(frame)      # lockstep; see `window` for pipelining
            use(matte.alpha)                 # [360,640] uint8

`AsyncStream` is the asyncio version. REST (DESIGN 4.4): `Client` / `AsyncClient` for
`POST /v1/matte`, video jobs and the admin calibrations.
"""

from ptq4vm_client.aio_stream import AsyncStream
from ptq4vm_client.codec import InputFormat, OutputFormat, decode_png, encode_frame
from ptq4vm_client.errors import (
    CodecUnavailableError,
    ConnectError,
    ConnectionLostError,
    FrameError,
    JobFailedError,
    MattesLostError,
    Ptq4vmError,
    ServiceError,
    StreamClosedError,
    StreamEndedError,
    StreamError,
    WaitTimeoutError,
)
from ptq4vm_client.messages import Matte, Started, Stopped, StreamStats
from ptq4vm_client.rest import AsyncClient, Calibration, Client, ImageMatte, Job
from ptq4vm_client.stream import Stream

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "Calibration",
    "Client",
    "CodecUnavailableError",
    "ConnectError",
    "ConnectionLostError",
    "FrameError",
    "ImageMatte",
    "InputFormat",
    "Job",
    "JobFailedError",
    "Matte",
    "MattesLostError",
    "OutputFormat",
    "Ptq4vmError",
    "ServiceError",
    "Started",
    "Stopped",
    "Stream",
    "StreamClosedError",
    "StreamEndedError",
    "StreamError",
    "StreamStats",
    "WaitTimeoutError",
    "decode_png",
    "encode_frame",
]
