"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from server.deps import MetricsDep, ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Still starting or shutting down."}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the active model is loaded and the workers run; 503 otherwise."""
    body: dict[str, Any] = {
        "status": "ready" if services.ready else "not ready",
        "model": services.registry.active(),
        "loaded": services.registry.loaded(),
        "sessions": services.sessions.attached(),
        "default_model": services.default_builder.describe(),
    }
    return JSONResponse(body, status_code=200 if services.ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(m: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(m.render(), media_type=m.content_type)
