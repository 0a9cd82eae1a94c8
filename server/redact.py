"""Error texts for clients carry no server paths: a path in an exception's message (a
registry directory, an upload's spool file) becomes `<path>`; the full text stays in the log."""

from __future__ import annotations

import re

# An absolute path of two or more parts, not one of the service's own routes.
_PATH = re.compile(r"(?:file:)?(?<![\w.~-])/(?!v1/|admin/)[^\s'\":,;()]+/[^\s'\":,;()]*")


def redact(text: str) -> str:
    """`text` with every absolute file path replaced by `<path>`."""
    return _PATH.sub("<path>", text)
