"""Upload size limits per path, answered with a JSON 413 that names the limit and its setting.

A request whose Content-Length is over the limit is refused before its body is read; a body
that turns out longer (chunked uploads) is cut off as soon as it passes the limit, so an
upload never fills the disk beyond it. A disk that fills up anyway while an upload is written
is answered 507 (`disk_full`), never 500.
"""

from __future__ import annotations

import errno
import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class UploadLimits:
    """ASGI middleware: `limits` maps a path to (max bytes, the setting's env var)."""

    def __init__(self, app: ASGIApp, limits: dict[str, tuple[int, str]]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        limit, setting = rule
        detail = f"upload too large: the limit is {limit} bytes ({setting})"
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


def disk_full(exc: OSError) -> HTTPException | None:
    """The 507 answer for an upload that ran out of disk space (ENOSPC, EDQUOT) while it was
    written; None for any other OSError (left to raise). The path stays in the server's log."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    logger.error("an upload ran out of disk space: %s", exc)
    return HTTPException(507, "the server has no disk space left to store the upload; retry later")
