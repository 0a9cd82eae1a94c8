"""Read-only view of the model registry (activation is an admin route, DESIGN 4.4)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from ptq4vm_core.artifact import ArtifactError
from ptq4vm_core.engine import ModelNotFoundError
from server.models.graphs import Graph, graph_file
from server.web.deps import ServicesDep
from server.web.responses import BAD_PARAMETERS, ModelList, ModelVersion, errors

# Browsers keep the graph and revalidate it on each use (a version's graph changes only when
# the exporter does, and a name may be reused after a version is removed): a 304 costs nothing.
GRAPH_CACHE_CONTROL = "public, no-cache"

router = APIRouter(prefix="/v1/models", tags=["models"])


# Unset keys are dropped: a version row has only the fields its manifest gives.
@router.get("", response_model=ModelList, response_model_exclude_unset=True)
def list_models(services: ServicesDep) -> dict[str, Any]:
    """Every version (`fp32` first), which one is active, and the embedded default's build."""
    return {
        "active": services.registry.active(),
        "versions": services.registry.describe(),
        "default_build": services.default_builder.describe(),
    }


@router.get(
    "/{version}",
    response_model=ModelVersion,
    response_model_exclude_unset=True,
    responses=errors({404: "No such version.", 422: BAD_PARAMETERS}),
)
def get_model(version: str, services: ServicesDep) -> dict[str, Any]:
    for row in services.registry.describe():
        if row["version"] == version:
            return row
    raise HTTPException(404, f"unknown model version {version!r}")


@router.get(
    "/{version}/onnx",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The ONNX graph."},
        304: {"description": "The graph named by If-None-Match is current."},
        **errors(
            {
                404: "No such version.",
                409: "The version's artifact cannot be trusted or exported.",
                422: "A `graph` that is neither general nor full_resolution.",
            }
        ),
    },
)
async def get_onnx(
    version: str,
    request: Request,
    services: ServicesDep,
    graph: Annotated[Graph, Query(description="`full_resolution`: ratio 1 only.")] = Graph.GENERAL,
) -> Response:
    """The graph the server runs for `version` (DESIGN 4.4): `fp32` is the published graph, a
    quantized version its exported int8 QDQ graph (`graph=full_resolution`: the form
    specialised for downsample ratio 1). Strong ETag; `If-None-Match` answers 304."""
    try:
        found = await asyncio.to_thread(graph_file, services.registry, version, graph)
    except ModelNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except ArtifactError as exc:
        raise HTTPException(409, f"model {version!r} cannot be exported: {exc}") from None
    headers = {"ETag": found.etag, "Cache-Control": GRAPH_CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), found.etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        found.path,
        media_type="application/octet-stream",
        filename=f"{version}-{graph.value}.onnx",
        headers=headers,
    )


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (`*` names any; `W/` compares weakly)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
