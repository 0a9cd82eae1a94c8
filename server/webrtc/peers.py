"""Every WHIP publisher of the process (`WhipPeers`), and the background images uploaded for
their composites (`Backgrounds`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer
from numpy.typing import NDArray

from server.models.registry import ModelLease
from server.webrtc.peer import PeerError, WhipPeer, WhipServices
from server.webrtc.render import Background, Output

logger = logging.getLogger(__name__)
# aioice logs every candidate pair's checks at INFO: a deployment's log wants none of it.
logging.getLogger("aioice").setLevel(logging.WARNING)

# Uploaded background images kept (least recently used first out), each at most this side.
MAX_BACKGROUNDS = 16
BACKGROUND_MAX_SIDE = 1920
CLOSE_TIMEOUT_S = 5.0


class Backgrounds:
    """Images uploaded with `POST /v1/backgrounds`, by the id that upload answered: public
    input names an image by id, never by path. Held in memory, a bounded number."""

    def __init__(self) -> None:
        self._images: OrderedDict[str, NDArray[np.uint8]] = OrderedDict()

    def add(self, rgb: NDArray[np.uint8]) -> str:
        image_id = secrets.token_urlsafe(12)
        self._images[image_id] = rgb
        while len(self._images) > MAX_BACKGROUNDS:
            self._images.popitem(last=False)
        return image_id

    def background(self, spec: str) -> Background:
        """`spec` as a background: an uploaded image's id, a colour or `blur`; ValueError."""
        image = self._images.get(spec)
        if image is not None:
            self._images.move_to_end(spec)
            return Background(image=image)
        return Background.parse(spec)


class WhipPeers:
    """The WHIP publishers of this process, by the id in their `Location`."""

    def __init__(self, services: WhipServices) -> None:
        self.services = services
        self.backgrounds = Backgrounds()
        settings = services.settings
        self.configuration = RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                for s in settings.ice_servers
            ]
        )
        self._peers: dict[str, WhipPeer] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._peers)

    async def publish(
        self,
        offer: str,
        lease: ModelLease,
        *,
        client: str,
        ratio: float | None,
        output: Output,
        background: Background,
    ) -> tuple[str, str]:
        """Answers `offer` with a new peer (capacity already admitted for `client`, `lease`
        taken): (its id, the SDP answer). PeerError, with capacity and lease given back."""
        peer = WhipPeer(
            self.services, lease, client=client, ratio=ratio, output=output,
            background=background, configuration=self.configuration, on_end=self._forget,
        )  # fmt: skip
        self._peers[peer.id] = peer
        try:
            answer = await peer.answer(offer)
        except PeerError as exc:
            peer.end("bad_offer", str(exc))
            raise
        except Exception as exc:
            logger.exception("whip: the offer could not be answered")
            peer.end("internal", str(exc))
            raise PeerError(500, f"the offer could not be answered: {exc}") from None
        return peer.id, answer

    def get(self, peer_id: str) -> WhipPeer | None:
        return self._peers.get(peer_id)

    def _forget(self, peer: WhipPeer) -> None:
        self._peers.pop(peer.id, None)
        if peer.closing is not None:
            self._closing.add(peer.closing)
            peer.closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Ends every peer and waits for their connections to close (sockets released)."""
        for peer in list(self._peers.values()):
            peer.end("shutdown", "the server is stopping")
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT_S)
