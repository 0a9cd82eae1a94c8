"""WebRTC publishing, WHIP (RFC 9725; DESIGN 4.6): `POST /v1/whip` with an SDP offer answers
201 with the SDP answer and the session's `Location`; `DELETE` on it ends the session. No
trickle ICE: the offer carries its candidates (PATCH answers 405, as RFC 9725 asks of a
server without it). `POST /v1/backgrounds` stores an image for composites, named by id.

The bearer token (PTQ4VM_WHIP_TOKEN, when set) and the Origin (PTQ4VM_ALLOWED_ORIGINS, the
admission middleware) are checked before the body is read; the offer's size before it is
parsed."""

from __future__ import annotations

import asyncio
from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter, File, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from ptq4vm_core.engine import ModelNotFoundError
from server.addresses import client_address, parse_networks
from server.media.sniff import MediaError, image_header
from server.models.registry import ModelUnavailableError
from server.services import Services, media_limits
from server.settings import Settings
from server.streaming.codec import FrameError, decode_image
from server.web.admission import bearer_refusal
from server.web.deps import ServicesDep, SettingsDep
from server.web.responses import BAD_ORIGIN, MALFORMED_UPLOAD, UPLOADS_BUSY, errors
from server.webrtc.peer import PeerError
from server.webrtc.peers import BACKGROUND_MAX_SIDE
from server.webrtc.render import OUTPUTS, Background, Output

router = APIRouter(tags=["webrtc"])

SDP = "application/sdp"


def _check_token(settings: Settings, authorization: str | None) -> None:
    if settings.whip_token is not None:
        refusal = bearer_refusal(settings.whip_token, authorization, "WHIP")
        if refusal is not None:
            raise refusal


async def _read_offer(request: Request, limit: int) -> str:
    """The offer's text; 413 over `limit` bytes (declared or sent), 415 not SDP, 400 not
    UTF-8."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != SDP:
        raise HTTPException(415, f"send the SDP offer as Content-Type: {SDP}, not {kind!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"an offer of {declared} bytes is over {limit} (PTQ4VM_WHIP_MAX_SDP_BYTES)"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the offer is over {limit} bytes (PTQ4VM_WHIP_MAX_SDP_BYTES)")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "the offer is not UTF-8 text") from None
    if not text.startswith("v=0"):
        raise HTTPException(400, "the offer is not an SDP session description (no v=0 line)")
    return text


def _background(services: Services, spec: str) -> Background:
    try:
        return services.whip.backgrounds.background(spec)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post(
    "/v1/whip",
    status_code=201,
    response_class=Response,
    responses={
        201: {"content": {SDP: {}}, "description": "The SDP answer; Location: the session."},
        **errors(
            {
                400: "Not an SDP offer, or one aiortc cannot parse.",
                401: "PTQ4VM_WHIP_TOKEN is set and no bearer token was sent.",
                403: f"A wrong WHIP token. {BAD_ORIGIN}",
                404: "Unknown model.",
                413: "The offer is over PTQ4VM_WHIP_MAX_SDP_BYTES.",
                415: f"Not {SDP}.",
                422: "Not exactly one video track offered sendrecv; bad output or background.",
                429: "This address has PTQ4VM_MAX_CONNECTIONS_PER_CLIENT sessions open.",
                503: "At capacity (PTQ4VM_MAX_SESSIONS, shared with /v1/stream), or the model "
                "cannot be loaded.",
            }
        ),
    },
)
async def publish(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="fp32 or a version; default: active.")] = None,
    downsample_ratio: Annotated[float | None, Query(gt=0, le=1)] = None,
    output: Annotated[
        Output,
        Query(
            description="composite (default), alpha (the matte as luma) or side_by_side (the "
            "input beside the matte)."
        ),
    ] = "composite",
    background: Annotated[
        str,
        Query(
            description="Composite background: a colour (name, #RRGGBB, R,G,B), blur, or an "
            "image id from POST /v1/backgrounds."
        ),
    ] = "green",
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Publish a camera track: the matted track comes back on the same peer connection, with
    per-frame stats on the data channel `ptq4vm` (the offer must open it)."""
    settings = services.settings
    _check_token(settings, authorization)
    if output not in OUTPUTS:
        raise HTTPException(422, f"output must be one of {', '.join(OUTPUTS)}")
    offer = await _read_offer(request, settings.whip_max_sdp_bytes)
    chosen = _background(services, background)
    client = client_address(request.scope, parse_networks(settings.trusted_proxies))
    sessions = services.sessions
    refusal = sessions.admit(client, None, settings.max_connections_per_client)
    if refusal == "at_capacity":
        raise HTTPException(
            503, f"server at capacity ({sessions.max_sessions} sessions); try again later",
            {"Retry-After": "5"},
        )  # fmt: skip
    if refusal is not None:
        raise HTTPException(
            429,
            f"{settings.max_connections_per_client} sessions from this address are open "
            "(PTQ4VM_MAX_CONNECTIONS_PER_CLIENT); end one first",
        )
    try:
        lease = await asyncio.to_thread(services.registry.acquire, model)
    except (ModelNotFoundError, ModelUnavailableError) as exc:
        sessions.leave(client, waiting=True)
        status = 404 if isinstance(exc, ModelNotFoundError) else 503
        raise HTTPException(status, str(exc)) from None
    try:
        peer_id, answer = await services.whip.publish(
            offer, lease, client=client, ratio=downsample_ratio, output=output, background=chosen
        )
    except PeerError as exc:  # the peer gave back capacity and lease
        raise HTTPException(exc.status, str(exc)) from None
    return Response(
        answer, status_code=201, media_type=SDP, headers={"Location": f"/v1/whip/{peer_id}"}
    )


@router.delete(
    "/v1/whip/{session}",
    response_class=Response,
    responses={
        200: {"content": None, "description": "Ended."},
        **errors(
            {
                401: "No bearer token.",
                403: f"A wrong token. {BAD_ORIGIN}",
                404: "No such session.",
                422: "A malformed request.",
            }
        ),
    },
)
async def end(
    session: str,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """End a WHIP session (its capacity is free at once)."""
    _check_token(services.settings, authorization)
    peer = services.whip.get(session)
    if peer is None:
        raise HTTPException(404, f"no WHIP session {session!r}")
    peer.end("deleted", "ended by DELETE")
    return Response(status_code=200)


def _load_background(data: bytes, settings: Settings) -> Background:
    header = image_header(data)
    media_limits(settings).check_pixels(header.width, header.height, "image")
    rgb = decode_image(data)
    scale = BACKGROUND_MAX_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8)
    return Background(image=rgb)


class StoredBackground(BaseModel):
    """An uploaded background: `background=<id>` on `POST /v1/whip`."""

    id: str


@router.post(
    "/v1/backgrounds",
    status_code=201,
    response_model=StoredBackground,
    responses=errors(
        {
            400: MALFORMED_UPLOAD,
            403: BAD_ORIGIN,
            413: "Over PTQ4VM_MAX_IMAGE_BYTES or PTQ4VM_MAX_PIXELS.",
            415: "Not a PNG or JPEG that decodes.",
            422: "No `image` part.",
            503: UPLOADS_BUSY,
        }
    ),
)
async def add_background(
    image: Annotated[UploadFile, File(description="PNG or JPEG.")],
    services: ServicesDep,
    settings: SettingsDep,
) -> StoredBackground:
    """Store a background image for WHIP composites (`background=<id>`); the server keeps the
    16 most recently used."""
    data = await image.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"image is over {settings.max_image_bytes} bytes")
    try:
        loaded = await asyncio.to_thread(_load_background, data, settings)
    except MediaError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except FrameError as exc:
        raise HTTPException(415, str(exc)) from None
    assert loaded.image is not None
    return StoredBackground(id=services.whip.backgrounds.add(loaded.image))
