"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from server.web.deps import MetricsDep, ServicesDep
from server.web.responses import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Still starting or shutting down."}},
)
def readyz(services: ServicesDep, response: Response) -> dict[str, Any]:
    """Ready when the active model is loaded and the workers run; 503 otherwise."""
    body: dict[str, Any] = {
        "status": "ready" if services.ready else "not ready",
        "model": services.registry.active(),
        "loaded": services.registry.loaded(),
        "sessions": services.sessions.attached(),
        "default_model": services.default_builder.describe(),
    }
    response.status_code = 200 if services.ready else 503
    return body


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(m: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(m.render(), media_type=m.content_type)
