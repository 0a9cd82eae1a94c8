"""The clients read only fields the protocol's schema has (issue 27): the Python client's reads
(`ptq4vm_client.protocol.READS`, and the schema it ships) and the browser page's (`msg.FIELD` in
clients/web/app.js, per message type). A field renamed on the server (and its schema rewritten)
fails here until the clients follow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ptq4vm_client.errors import StreamError
from ptq4vm_client.protocol import READS, check, server_messages

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "stream-protocol.schema.json").read_text())
APP_JS = (ROOT / "clients" / "web" / "app.js").read_text()


def fields(direction: str) -> dict[str, set[str]]:
    models = SCHEMA[direction]["$defs"].values()
    return {m["properties"]["type"]["const"]: set(m["properties"]) for m in models}


def test_the_python_client_reads_fields_the_schema_has() -> None:
    server = fields("server")
    assert set(READS) == set(server)
    for kind, read in READS.items():
        assert set(read) <= server[kind], f"{kind}: {set(read) - server[kind]} not in the schema"
    # The schema the package ships is the server's.
    assert {k: v[0] for k, v in server_messages().items()} == server


def test_the_python_client_refuses_a_message_without_its_fields() -> None:
    good = {"type": "stopped", "session": "s", "frames": 1, "matted": 1, "dropped": 0}
    assert check(good) is good
    with pytest.raises(StreamError, match=r"lacks \['matted'\]"):
        check({k: v for k, v in good.items() if k != "matted"})
    with pytest.raises(StreamError, match="unknown message type 'stoped'"):
        check({**good, "type": "stoped"})


def _block(source: str, start: str, end: str) -> str:
    begin = source.index(start)
    return source[begin : source.index(end, begin + len(start))]


def app_js_reads() -> dict[str, set[str]]:
    """`msg.FIELD` reads of app.js, per server message type: the `started` and `error`
    branches of onMessage and the matte handler (onMatte gets the matte's header)."""
    on_message = _block(APP_JS, "function onMessage(", "\nfunction ")
    blocks = {
        "started": _block(on_message, 'msg.type === "started"', "} else if"),
        "error": _block(on_message, 'msg.type === "error"', "\n}"),
        "matte": _block(APP_JS, "function onMatte(msg", "\nfunction "),
    }
    return {k: set(re.findall(r"\bmsg\.(\w+)", b)) - {"type"} for k, b in blocks.items()}


def test_the_browser_page_reads_fields_the_schema_has() -> None:
    server = fields("server")
    reads = app_js_reads()
    assert reads["started"] >= {"session", "model", "next_seq"}  # the parse found the code
    for kind, read in reads.items():
        assert read <= server[kind], f"app.js reads {read - server[kind]} of {kind}"


def test_the_browser_page_sends_fields_the_schema_has() -> None:
    client = fields("client")
    start = _block(APP_JS, 'type: "start"', "}")
    sent = set(re.findall(r"\b(\w+):", start)) - {"type"}
    assert "width" in sent  # the parse found the code
    assert sent <= client["start"], f"app.js sends {sent - client['start']} in start"
