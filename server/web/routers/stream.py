"""`GET /v1/stream`: the WebSocket streaming protocol (DESIGN 4.3; see
server.streaming.connection)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from server.streaming.connection import Connection
from server.web.deps import ServicesDep

router = APIRouter(tags=["stream"])


@router.websocket("/v1/stream")
async def stream(
    websocket: WebSocket,
    services: ServicesDep,
    session: Annotated[
        str | None,
        Query(
            description="Resume this session (within its TTL). An ID that names no session "
            "starts a new one, which takes that ID when it is 22 to 128 URL-safe characters."
        ),
    ] = None,
) -> None:
    await Connection(websocket, services, resume=session).run()
