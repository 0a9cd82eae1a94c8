"""Hostile HTTP requests, generated (issue 18), against real servers on loopback sockets:

* anonymous admin requests: every admin route (and made-up paths under `/admin`), any method,
  no token, a malformed Authorization or a wrong token, with bodies that declare up to 1 GiB
  and send a few KiB: always 401/403 (404 with admin off), answered before the body is read,
  never a 2xx or 5xx;
* decompression bombs: PNG and JPEG images declaring up to 2**31 - 1 pixels a side posted to
  `/v1/matte` and as a job's `background_image`: 413 naming PTQ4VM_MAX_PIXELS (415 for a
  header that declares no size), never decoded.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.serve import gauge
from tests.security.media import jpeg_declaring, png_declaring, write_video
from tests.server.conftest import RunningServer, ServerFactory

TOKEN = "hostile-http-token"
MAX_PIXELS = 10_000
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def admin_on(start_server: ServerFactory) -> RunningServer:
    return start_server(admin_token=TOKEN, min_free_bytes=0, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def admin_off(start_server: ServerFactory) -> RunningServer:
    return start_server(min_free_bytes=0)


def admin_routes(server: RunningServer) -> list[tuple[str, str]]:
    """(method, path) of every admin operation in the server's OpenAPI schema, path
    parameters filled with a placeholder."""
    schema = httpx.get(f"{server.http}/openapi.json", timeout=30).json()
    found = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in schema["paths"].items()
        if path.startswith("/admin")
        for method in operations
    ]
    assert ("POST", "/admin/calibrations") in found, found
    return found


AUTHORIZATION = st.one_of(
    st.none(),
    st.sampled_from(["", "Bearer", "Bearer ", "Basic " + "YWRtaW46YWRtaW4=", TOKEN, "Token x"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80).map(
        lambda t: f"Bearer {t}"
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
).filter(lambda a: a is None or a.partition(" ")[2].strip() != TOKEN)


@st.composite
def admin_request(draw: st.DrawFn, routes: list[tuple[str, str]]) -> dict[str, Any]:
    method, path = draw(st.sampled_from(routes))
    if draw(st.booleans()):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
    if draw(st.integers(0, 4)) == 0:
        path = "/admin/" + draw(st.text(st.sampled_from("abcxyz/%0123._-"), max_size=30))
    return {
        "method": method,
        "path": path,
        "authorization": draw(AUTHORIZATION),
        "declared": draw(st.sampled_from([0, 1 << 10, 1 << 20, 1 << 30])),
        "sent": draw(st.integers(0, 4096)),
        "content_type": draw(
            st.sampled_from(
                ["multipart/form-data; boundary=x", "application/json", "application/x-www"]
            )
        ),
    }


def raw_request(server: RunningServer, request: dict[str, Any]) -> int:
    """Sends the request's headers (Content-Length `declared`) and `sent` bytes of its body;
    the status the server answered with, without the rest of the body (30 s or it fails)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with sock:
        lines = [
            f"{request['method']} {request['path']} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            f"Content-Type: {request['content_type']}",
            f"Content-Length: {request['declared']}",
        ]
        if request["authorization"] is not None:
            lines.append(f"Authorization: {request['authorization']}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        with contextlib.suppress(OSError):  # the server may close as soon as it answered
            sock.sendall(b"-" * min(request["sent"], request["declared"]))
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_anonymous_admin_requests_are_refused_before_their_bodies(
    admin_on: RunningServer, admin_off: RunningServer
) -> None:
    routes = admin_routes(admin_on)

    @FUZZ
    @given(admin_request(routes))
    def anonymous(request: dict[str, Any]) -> None:
        on = raw_request(admin_on, request)
        expected = {401} if request["authorization"] in (None, "") else {401, 403}
        assert on in expected, (request, on)
        assert raw_request(admin_off, request) == 404, request

    anonymous()
    for server in (admin_on, admin_off):
        assert httpx.get(f"{server.http}/healthz", timeout=30).status_code == 200
    # Nothing anonymous reached a route: no calibration was queued.
    listed = httpx.get(
        f"{admin_on.http}/admin/calibrations",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert listed.status_code == 200
    assert listed.json() == []


@st.composite
def bomb(draw: st.DrawFn) -> tuple[str, int, int]:
    """(format, width, height) declaring more than MAX_PIXELS, or a zero side."""
    fmt = draw(st.sampled_from(["png", "jpeg"]))
    side = 2**31 - 1 if fmt == "png" else 65_535
    width = draw(st.integers(0, side) | st.sampled_from([0, 1, side]))
    low = 0 if width == 0 else MAX_PIXELS // max(width, 1) + 1
    height = draw(st.integers(min(low, side), side) | st.just(0))
    return fmt, width, height


def bomb_bytes(fmt: str, width: int, height: int) -> bytes:
    return png_declaring(width, height) if fmt == "png" else jpeg_declaring(width, height)


def check_refused(answer: httpx.Response, width: int, height: int) -> None:
    if width == 0 or height == 0:
        assert answer.status_code == 415, answer.text
        return
    assert answer.status_code == 413, answer.text
    assert "PTQ4VM_MAX_PIXELS" in answer.json()["detail"]


def test_decompression_bombs_are_refused_by_their_headers(
    admin_on: RunningServer, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "short.mp4", 32, 32, 3).read_bytes()

    @FUZZ
    @given(bomb(), st.booleans())
    def post(case: tuple[str, int, int], as_background: bool) -> None:
        fmt, width, height = case
        if width * height and width * height <= MAX_PIXELS:
            return  # jpeg_declaring caps a side at 65535: not a bomb
        data = bomb_bytes(fmt, width, height)
        with admin_on.client() as http:
            if as_background:
                answer = http.post(
                    "/v1/jobs",
                    files={
                        "video": ("clip.mp4", video, "video/mp4"),
                        "background_image": (f"bg.{fmt}", data, f"image/{fmt}"),
                    },
                    data={"output": "composite"},
                )
            else:
                answer = http.post("/v1/matte", files={"image": (f"b.{fmt}", data)})
        check_refused(answer, width, height)

    post()
    with admin_on.client() as http:
        assert http.get("/healthz").status_code == 200
        finished = re.findall(r"^ptq4vm_jobs_total\{.*\} (\S+)$", http.get("/metrics").text, re.M)
    # No bomb became a job.
    assert gauge(admin_on.http, "ptq4vm_jobs_active") == 0
    assert all(float(n) == 0 for n in finished), finished
