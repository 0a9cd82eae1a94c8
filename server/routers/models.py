"""Read-only view of the model registry (activation is an admin route, DESIGN 4.4)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from server.deps import ServicesDep

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(services: ServicesDep) -> dict[str, Any]:
    """Every version (`fp32` first), which one is active, and the embedded default's build."""
    return {
        "active": services.registry.active(),
        "versions": services.registry.describe(),
        "default_build": services.default_builder.describe(),
    }


@router.get("/{version}", responses={404: {"description": "No such version."}})
def get_model(version: str, services: ServicesDep) -> dict[str, Any]:
    for row in services.registry.describe():
        if row["version"] == version:
            return row
    raise HTTPException(404, f"unknown model version {version!r}")
