"""Client-proposed session ids, what lets a proxy that hashes on `?session=` keep a new
session and its resumes on one replica (deploy/nginx/ptq4vm.conf): an id that names no
session becomes the new session's id when it is 22 to 128 URL-safe characters."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.server.conftest import RunningServer


def test_a_proposed_id_names_the_new_session_and_resumes_it(
    server: RunningServer, clip_rgb: list[NDArray[np.uint8]]
) -> None:
    proposed = secrets.token_hex(16)  # what nginx's $request_id looks like
    with server.stream(input="rgb24", session=proposed) as stream:
        assert stream.started["session"] == proposed
        assert stream.started["resumed"] is False
        assert stream.started["next_seq"] == 0
        meta, _ = stream.matte(clip_rgb[0].tobytes())
        assert (meta["seq"], meta["fresh"]) == (0, True)
    with server.stream(input="rgb24", session=proposed) as again:
        assert again.started["session"] == proposed
        assert again.started["resumed"] is True
        meta, _ = again.matte(clip_rgb[1].tobytes())
        assert (meta["seq"], meta["fresh"]) == (1, False)
        assert again.stop()["frames"] == 2
    # Stopped: the id names no session any more, so proposing it again starts afresh.
    with server.stream(input="rgb24", session=proposed) as fresh:
        assert (fresh.started["session"], fresh.started["resumed"]) == (proposed, False)
        assert fresh.started["next_seq"] == 0


@pytest.mark.parametrize(
    "proposed",
    [
        "A" * 21,  # shorter than the server's own ids: too easy to guess
        "a" * 129,
        "a" * 21 + "/",
        "not.a.proposable.session.id",
        "",
    ],
)
def test_an_id_of_another_form_gets_a_new_one(server: RunningServer, proposed: str) -> None:
    with server.stream(session=proposed) as stream:
        assert stream.started["resumed"] is False
        assert stream.started["session"] != proposed
        assert len(stream.started["session"]) >= 22


@pytest.mark.parametrize("length", [22, 128])
def test_the_bounds_of_the_id_length_are_taken(server: RunningServer, length: int) -> None:
    proposed = ("b-_9" * 40)[:length]
    with server.stream(session=proposed) as stream:
        assert stream.started["session"] == proposed
        assert stream.started["resumed"] is False
