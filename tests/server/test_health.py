"""Health, readiness, metrics, OpenAPI and the static-files hook."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from tests.server.conftest import RunningServer, ServerFactory


def test_healthz_and_readyz(server: RunningServer) -> None:
    with server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["model"]) == ("ready", "fp32")
    assert "fp32" in body["loaded"]
    assert body["default_model"]["state"] == "off"


def test_opencv_threads_follow_the_setting(start_server: ServerFactory) -> None:
    # One OpenCV thread by default (the engine's threads own the cores); the setting changes it.
    cv2.setNumThreads(3)
    start_server()
    assert cv2.getNumThreads() == 1
    start_server(opencv_threads=2)
    assert cv2.getNumThreads() == 2
    cv2.setNumThreads(1)


def test_metrics_after_streaming(server: RunningServer, clip_rgb: list[NDArray[np.uint8]]) -> None:
    with server.stream(input="rgb24") as stream:
        session = stream.started["session"]
        for frame in clip_rgb[:3]:
            stream.matte(frame.tobytes())
        with server.client() as http:
            during = http.get("/metrics").text
        stream.stop()
    with server.client() as http:
        response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r"^ptq4vm_stream_sessions_active 1\.0$", during, re.M)
    assert re.search(r"^ptq4vm_stream_sessions_active 0\.0$", text, re.M)
    for name in (
        "ptq4vm_stream_frames_received_total",
        'ptq4vm_frames_matted_total{lane="realtime",model="fp32"}',
        "ptq4vm_stream_frames_dropped_total",
        'ptq4vm_queue_seconds_bucket{lane="realtime",le="0.005"}',
        'ptq4vm_inference_seconds_count{model="fp32"}',
        "ptq4vm_decode_seconds_count",
        "ptq4vm_encode_seconds_count",
        "ptq4vm_batch_size_count",
        'ptq4vm_model_info{engine="openvino-fp32",version="fp32"} 1.0',
        "ptq4vm_models_loaded 1.0",
    ):
        assert name in text, name
    frames = re.search(r"^ptq4vm_stream_frames_received_total (\S+)$", text, re.M)
    assert frames is not None
    assert float(frames.group(1)) >= 3
    assert session not in text  # no session ids as labels


def test_openapi_lists_the_rest_api(server: RunningServer) -> None:
    with server.client() as http:
        spec = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    assert {
        "/v1/matte",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    assert spec["paths"]["/v1/jobs"]["post"]["responses"].keys() >= {"202", "413", "415"}


def test_every_json_answer_has_a_response_model(server: RunningServer) -> None:
    """The schema names a model for each JSON success (what schemathesis checks answers
    against), and a live answer has exactly that model's keys."""
    with server.client() as http:
        spec = http.get("/openapi.json").json()
        ready = http.get("/readyz").json()
    described = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json")
                if status.startswith("2") and content is not None:
                    schema = content["schema"]
                    assert "$ref" in schema or "$ref" in schema.get("items", {}), (method, path)
                    described.append(f"{method.upper()} {path}")
    assert {"GET /readyz", "GET /v1/models", "POST /v1/jobs", "GET /v1/jobs/{job_id}"} <= set(
        described
    )
    readiness = spec["components"]["schemas"]["Readiness"]
    assert set(ready) == set(readiness["properties"]) == set(readiness["required"])
    build = spec["components"]["schemas"]["DefaultBuild"]
    assert set(ready["default_model"]) == set(build["properties"]) == set(build["required"])
    assert {"stage", "progress", "eta_s"} <= set(build["properties"])


def test_every_error_answer_has_a_model(server: RunningServer) -> None:
    """Each 4xx/5xx in the schema names its JSON body (what schemathesis checks refusals
    against), and live refusals have exactly those bodies' keys."""
    with server.client() as http:
        spec = http.get("/openapi.json").json()
        missing = http.get("/v1/models/nope")
        bad_form = http.post("/v1/jobs", files={"video": ("a.mp4", b"x")}, data={"output": "x"})
        bad_ratio = http.post(
            "/v1/matte", files={"image": ("a.png", b"x")}, data={"downsample_ratio": "2"}
        )
    errors = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    errors.append((method.upper(), path, status, schema["$ref"].split("/")[-1]))
    models = {model for _, _, _, model in errors}
    assert models == {"ErrorBody", "InvalidRequest", "Readiness"}, errors
    assert all(model == "InvalidRequest" for *_, status, model in errors if status == "422")
    assert ("POST", "/v1/matte", "415", "ErrorBody") in errors
    body = spec["components"]["schemas"]["ErrorBody"]
    assert missing.status_code == 404
    assert set(missing.json()) == set(body["properties"]) == {"detail"}
    assert isinstance(missing.json()["detail"], str)
    for refused in (bad_form, bad_ratio):
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["detail"]
        assert {"loc", "msg", "type"} <= set(problem)


def test_models_lists_fp32(server: RunningServer) -> None:
    with server.client() as http:
        body = http.get("/v1/models").json()
        assert http.get("/v1/models/fp32").json()["active"] is True
        assert http.get("/v1/models/nope").status_code == 404
    assert body["active"] == "fp32"
    assert [v["version"] for v in body["versions"]] == ["fp32"]


def test_static_files_hook(start_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>client</h1>")
    server = start_server(static_dir=tmp_path)
    with server.client() as http:
        assert http.get("/").text == "<h1>client</h1>"
        assert http.get("/healthz").json() == {"status": "ok"}  # the API still wins
