"""Checks that run before a route and before any body is read (ASGI middleware), so a hostile
client costs the server a header parse, never a spooled upload:

* `Origin` of the WebSocket handshake and of every state-changing HTTP request (POST, PUT,
  PATCH, DELETE) against PTQ4VM_ALLOWED_ORIGINS: empty (the default) allows the server's own
  origin, `*` allows any, else a comma-separated list. No Origin (not a browser) is allowed.
  A refusal is HTTP 403 (at the handshake for a WebSocket).
* `/admin/*`: the bearer token (404 with admin off, 401 without a token, 403 a wrong one).
* Uploads: at most PTQ4VM_MAX_UPLOADS read at once, and `POST /v1/jobs` only while a job can
  still be queued (PTQ4VM_MAX_JOBS): 503 with Retry-After otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.settings import Settings

logger = logging.getLogger(__name__)

UPLOAD_PATHS = frozenset({"/v1/matte", "/v1/jobs", "/v1/backgrounds", "/admin/calibrations"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def admin_refusal(settings: Settings, authorization: str | None) -> HTTPException | None:
    """Why an admin request is refused (404 admin off, 401 no bearer token, 403 wrong token),
    or None. The token is compared in constant time."""
    if settings.admin_token is None:
        return HTTPException(404, "Not Found")
    return bearer_refusal(settings.admin_token, authorization, "admin")


def bearer_refusal(token: SecretStr, authorization: str | None, what: str) -> HTTPException | None:
    """Why `Authorization` does not carry `token` (401 no bearer token, 403 another), or None;
    compared in constant time. `what` names the routes in the message."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return HTTPException(
            401, f"{what} routes need Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        return HTTPException(403, f"wrong {what} token")
    return None


def _is_loopback(hostname: str) -> bool:
    if hostname in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def busy(why: str, retry_after_s: int) -> HTTPException:
    """503 saying `why`, with when to retry."""
    return HTTPException(503, f"{why}; retry later", {"Retry-After": str(retry_after_s)})


class OriginPolicy:
    """PTQ4VM_ALLOWED_ORIGINS as a predicate over (Origin, Host)."""

    def __init__(self, allowed: str, bind_host: str) -> None:
        items = {o.strip().rstrip("/").lower() for o in allowed.split(",") if o.strip()}
        self.any = "*" in items
        self.listed = frozenset(items - {"*"})
        # A server bound to loopback is its own origin only under a loopback name: a page on
        # another name that resolves here (DNS rebinding) carries its own Host and is refused.
        self.loopback_only = _is_loopback(bind_host)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if self.any or origin in self.listed:
            return True
        if self.listed or not host:
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https"):
            return False
        if parts.netloc == host.lower():
            return not self.loopback_only or _is_loopback(parts.hostname or "")
        # localhost and 127.0.0.1 (and ::1) on the same port are this same loopback server.
        served = urlsplit(f"//{host.lower()}")
        return (
            _is_loopback(parts.hostname or "")
            and _is_loopback(served.hostname or "")
            and parts.port == served.port
        )


class RequestGates:
    """ASGI middleware applying the module's checks; `settings` are the app's."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.origins = OriginPolicy(settings.allowed_origins, settings.host)
        self.uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope.get("path", "")
        checks_origin = scope["type"] == "websocket" or scope.get("method") not in _SAFE_METHODS
        if checks_origin and not self.origins.allows(headers.get("origin"), headers.get("host")):
            logger.info("refused origin %r on %s", headers.get("origin", "")[:200], path)
            await self._refuse(scope, receive, send, HTTPException(403, "origin not allowed"))
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        if path == "/admin" or path.startswith("/admin/"):
            refusal = admin_refusal(self.settings, headers.get("authorization"))
            if refusal is not None:
                await self._refuse(scope, receive, send, refusal)
                return
        if scope.get("method") == "POST" and path in UPLOAD_PATHS:
            await self._upload(scope, receive, send, path)
            return
        await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if self.uploads >= self.settings.max_uploads:
            why = f"{self.uploads} uploads are being received, the limit (PTQ4VM_MAX_UPLOADS)"
            await self._refuse(scope, receive, send, busy(why, retry_after_s=5))
            return
        jobs = scope["app"].state.services.jobs if path == "/v1/jobs" else None
        if jobs is not None and not jobs.try_reserve():
            why = f"{jobs.max_jobs} jobs are queued, running or uploading (PTQ4VM_MAX_JOBS)"
            await self._refuse(scope, receive, send, busy(why, retry_after_s=30))
            return
        self.uploads += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.uploads -= 1
            if jobs is not None:
                jobs.unreserve()

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting: the server answers the handshake with HTTP 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        await response(scope, receive, send)
