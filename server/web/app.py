"""The app factory: `create_app(settings)` builds the FastAPI service (DESIGN 3, 4.3, 4.4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.services import Services
from server.settings import Settings
from server.web.admission import RequestGates
from server.web.limits import UploadLimits
from server.web.routers import admin, health, jobs, matte, models, stream, whip
from server.web.static import IsolatedStaticFiles

logger = logging.getLogger(__name__)

DESCRIPTION = """Background removal for live video: Robust Video Matting quantized with PTQ4VM.

Streaming is a WebSocket at `/v1/stream` (not listed below; see docs/server.md): send a start
message, then frames; receive one matte per processed frame.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for `settings` (default: from the environment). Its services start with
    the app's lifespan and are reachable as `app.state.services`."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings)
        app.state.services = services
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="PTQ4VM matting service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(stream.router)
    app.include_router(matte.router)
    app.include_router(jobs.router)
    app.include_router(admin.router)
    app.include_router(whip.router)
    app.add_middleware(
        UploadLimits,
        limits={
            "/v1/matte": (settings.max_image_bytes, "PTQ4VM_MAX_IMAGE_BYTES"),
            "/v1/backgrounds": (settings.max_image_bytes, "PTQ4VM_MAX_IMAGE_BYTES"),
            "/v1/jobs": (settings.max_upload_bytes, "PTQ4VM_MAX_UPLOAD_BYTES"),
            "/admin/calibrations": (
                settings.max_calibration_bytes,
                "PTQ4VM_MAX_CALIBRATION_BYTES",
            ),
        },
    )
    # Added last, so it runs first: origin, admin token and upload slots before any body.
    app.add_middleware(RequestGates, settings=settings)
    mount_static(app, settings)
    return app


def mount_static(app: FastAPI, settings: Settings) -> None:
    """The browser client's hook: static files at `/` when PTQ4VM_STATIC_DIR is set, cross-origin
    isolated (`server.web.static`). Mounted last, so the API routes above win."""
    if settings.static_dir is not None:
        app.mount("/", IsolatedStaticFiles(directory=settings.static_dir, html=True), name="static")
        logger.info("serving static files from %s at /", settings.static_dir)
