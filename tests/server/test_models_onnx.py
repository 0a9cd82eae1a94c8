"""`GET /v1/models/{version}/onnx` (DESIGN 4.4): the graph the server runs, with ETag and 304."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ptq4vm_core.engine.cache import cached_export
from tests.server.conftest import RunningServer


def test_fp32_is_the_published_graph_with_an_etag(server: RunningServer) -> None:
    published = (server.settings.home / "weights").glob("*.onnx")
    expected = next(published).read_bytes()
    with server.client() as http:
        response = http.get("/v1/models/fp32/onnx")
        assert response.status_code == 200
        assert response.content == expected
        assert response.headers["content-type"] == "application/octet-stream"
        etag = response.headers["etag"]
        assert etag == f'"sha256-{hashlib.sha256(expected).hexdigest()}"'
        assert response.headers["cache-control"] == "public, no-cache"

        again = http.get("/v1/models/fp32/onnx", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        other = http.get("/v1/models/fp32/onnx", headers={"If-None-Match": '"sha256-0"'})
        assert other.status_code == 200


def test_a_quantized_version_is_its_exported_graph(
    server: RunningServer, quantized_artifact: Path
) -> None:
    version = server.services.registry.register(quantized_artifact, "onnx-w8a8")
    graphs = cached_export(server.settings.home / "models" / version, root=server.settings.home)
    with server.client() as http:
        general = http.get(f"/v1/models/{version}/onnx")
        ds1 = http.get(f"/v1/models/{version}/onnx", params={"graph": "full_resolution"})
        assert general.status_code == ds1.status_code == 200
        assert general.content == graphs.general.read_bytes()
        assert ds1.content == graphs.full_resolution.read_bytes()
        assert general.headers["etag"] != ds1.headers["etag"]
        revalidated = http.get(
            f"/v1/models/{version}/onnx", headers={"If-None-Match": general.headers["etag"]}
        )
        assert revalidated.status_code == 304


def test_unknown_version_and_graph_are_refused(server: RunningServer) -> None:
    with server.client() as http:
        missing = http.get("/v1/models/nope/onnx")
        assert missing.status_code == 404
        assert "nope" in missing.json()["detail"]
        bad = http.get("/v1/models/fp32/onnx", params={"graph": "tiny"})
        assert bad.status_code == 422


def test_the_page_is_cross_origin_isolated(server: RunningServer) -> None:
    with server.client() as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        assert page.headers["cross-origin-embedder-policy"] == "require-corp"
        script = http.get("/app.js")
        assert script.headers["cross-origin-resource-policy"] == "same-origin"
        assert script.headers["content-type"].startswith("text/javascript")
