"""A WebSocket client on a bare TCP socket (websockets' sans-I/O protocol), for the faults a
real client's network produces and a well-behaved library never would: a frame cut off
half-way, a socket gone without a close frame (RST or FIN), a peer that stops reading and
never answers pings. Nothing is read from the socket unless the test asks: a `RawClient` that
is not read from answers no ping."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class RawClient:
    def __init__(self, url: str, *, rcvbuf: int | None = None, timeout: float = 30) -> None:
        parts = urlsplit(url)
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window is negotiated with it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._frames: list[Frame] = []
        self.close_code: int | None = None
        deadline = time.monotonic() + timeout
        while True:
            events = self._read(deadline)
            response = next((e for e in events if isinstance(e, Response)), None)
            self._frames.extend(e for e in events if isinstance(e, Frame))
            if response is not None:
                break
        if response.status_code != 101:
            raise ConnectionError(f"handshake refused: {response.status_code}")

    # Sending ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send_json(self, obj: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(obj).encode())
        self._flush()

    def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self._flush()

    def send_partial_binary(self, data: bytes, fraction: float = 0.5) -> int:
        """Send only the first `fraction` of a binary message's wire bytes (header included);
        returns how many bytes went out. The protocol object is unusable afterwards."""
        self.protocol.send_binary(data)
        wire = b"".join(self.protocol.data_to_send())
        cut = max(1, int(len(wire) * fraction))
        self.sock.sendall(wire[:cut])
        return cut

    # Vanishing -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Close with a TCP RST: no close frame, no FIN (a crashed client, a pulled cable seen
        by the next packet)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def drop(self) -> None:
        """Close the TCP connection (FIN) without the WebSocket closing handshake."""
        self.sock.close()

    # Receiving -------------------------------------------------------------------------------

    def _read(self, deadline: float) -> list[Any]:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = self.sock.recv(1 << 16)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        # Pongs and the close echo, as a live client sends them; a server already gone still
        # left what it sent to be read.
        with contextlib.suppress(OSError):
            self._flush()
        events = self.protocol.events_received()
        if not data and not events:
            raise ConnectionResetError("the server closed the connection")
        return events

    def recv(self, timeout: float = 30) -> Frame:
        """The next data frame (text or binary); ConnectionResetError once the server has
        closed (its close code is then in `close_code`)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if frame.opcode is Opcode.CLOSE:
                    self.close_code = Close.parse(frame.data).code if frame.data else 1005
                    raise ConnectionResetError(f"closed by the server: {self.close_code}")
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    return frame
            self._frames.extend(e for e in self._read(deadline) if isinstance(e, Frame))

    def recv_json(self, timeout: float = 30) -> dict[str, Any]:
        frame = self.recv(timeout)
        assert frame.opcode is Opcode.TEXT, f"expected text, got {len(frame.data)} bytes"
        obj: dict[str, Any] = json.loads(bytes(frame.data))
        return obj

    def wait_closed(self, timeout: float = 30) -> int | None:
        """Read (answering nothing new) until the server closes; its close code, or None when
        the connection ended without a close frame."""
        try:
            while True:
                self.recv(timeout)
        except ConnectionResetError:
            return self.close_code

    def close(self) -> None:
        self.sock.close()
