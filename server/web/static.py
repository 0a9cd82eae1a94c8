"""The browser client's static files, served cross-origin isolated (DESIGN 4.5).

onnxruntime-web runs its WebAssembly on several threads only where `SharedArrayBuffer` exists,
which browsers grant to cross-origin isolated pages: the page must come with COOP
`same-origin` and COEP `require-corp`, and everything it loads must be same-origin or carry
CORP. Every file here gets all three, so the vendored runtime (`vendor/`) and the page load
as one isolated origin.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class IsolatedStaticFiles(StaticFiles):
    """StaticFiles whose responses (304s too) carry the cross-origin isolation headers; files
    are revalidated on every use (`no-cache`: ETag/Last-Modified make that a 304), so a new
    client or a re-vendored runtime is picked up at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(ISOLATION_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response
