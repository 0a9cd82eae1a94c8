"""A small synchronous client for `/v1/stream`, on the real `websockets` library."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
from numpy.typing import NDArray
from websockets.sync.client import ClientConnection, connect


class StreamError(Exception):
    """The server answered a frame with an error message."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message


def decode_png(data: bytes) -> NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    assert image.ndim == 2, f"not a grey PNG: shape {image.shape}"
    assert image.dtype == np.uint8, f"not an 8-bit PNG: {image.dtype}"
    return np.asarray(image)


class Stream:
    """Connects, sends the start message (unless `start=False`) and keeps `started`."""

    def __init__(
        self,
        url: str,
        *,
        session: str | None = None,
        start: bool = True,
        width: int = 176,
        height: int = 144,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        **fields: Any,
    ) -> None:
        """`source`: the local address to connect from (e.g. 127.0.0.2: another client
        address on loopback)."""
        self.url = url if session is None else f"{url}?session={session}"
        self.headers = headers
        self.source = source
        self.fields: dict[str, Any] = {"type": "start", "width": width, "height": height}
        self.fields.update(fields)
        self.send_start = start
        self.started: dict[str, Any] = {}
        self.ws: ClientConnection | None = None

    def __enter__(self) -> Stream:
        # Entering the connection is how websockets >= 17.1 wants it used (no legacy mode).
        sock = None
        if self.source is not None:
            parts = urlsplit(self.url)
            sock = socket.create_connection(
                (parts.hostname, parts.port), timeout=30, source_address=(self.source, 0)
            )
        self.ws = connect(
            self.url,
            sock=sock,
            compression=None,
            max_size=None,
            open_timeout=30,
            additional_headers=self.headers,
        ).__enter__()
        if self.send_start:
            self.send_json(self.fields)
            self.started = self.recv_json()
            if self.started.get("type") != "started":
                raise StreamError(self.started)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def conn(self) -> ClientConnection:
        assert self.ws is not None, "use Stream as a context manager"
        return self.ws

    def send_json(self, obj: dict[str, Any]) -> None:
        self.conn.send(json.dumps(obj))

    def recv_json(self, timeout: float = 60) -> dict[str, Any]:
        message = self.conn.recv(timeout=timeout)
        assert isinstance(message, str), f"expected a text message, got {len(message)} bytes"
        obj: dict[str, Any] = json.loads(message)
        return obj

    def recv_matte(self, timeout: float = 60) -> tuple[dict[str, Any], bytes]:
        """The next matte and its payload; StreamError for an error message."""
        message = self.recv_json(timeout)
        if message["type"] != "matte":
            raise StreamError(message)
        payload = self.conn.recv(timeout=timeout)
        assert isinstance(payload, bytes), "a matte must be followed by a binary message"
        return message, payload

    def matte(self, frame: bytes) -> tuple[dict[str, Any], bytes]:
        """Send one frame and wait for its matte (lockstep: nothing is ever dropped)."""
        self.conn.send(frame)
        return self.recv_matte()

    def stop(self) -> dict[str, Any]:
        self.send_json({"type": "stop"})
        return self.recv_json()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def vanish(self) -> None:
        """Drop the TCP connection without a closing handshake (a client that disappears)."""
        self.conn.socket.shutdown(socket.SHUT_RDWR)
        self.conn.socket.close()
        self.ws = None
