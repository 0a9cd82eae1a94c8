"""The ONNX graph a version runs, as a file with a content ETag (DESIGN 4.4, `/onnx` route).

`fp32` is the published RVM graph; a quantized version is its exported int8 QDQ graph from
the engine's export cache (made on first use, `engine.cache.cached_export`), the same file the
server's deployed engine loads. An export has two graphs (`export.ExportedGraphs`): the general
one, for any downsample ratio, and one specialised for ratio 1 (identity resizes removed,
same function); `Graph` names which. The published fp32 graph is one graph for both.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ptq4vm_core.artifact.verify import verify
from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine import FP32, ModelNotFoundError
from ptq4vm_core.engine.cache import cached_export
from server.models.registry import ModelRegistry

CHUNK = 1 << 20


class Graph(StrEnum):
    """Which exported graph: `general` (any ratio) or `full_resolution` (ratio 1 only)."""

    GENERAL = "general"
    FULL_RESOLUTION = "full_resolution"


@dataclass(frozen=True)
class GraphFile:
    """A graph on disk and its strong ETag (quoted, from the file's sha256)."""

    path: Path
    etag: str


_digests: dict[tuple[Path, int, int], str] = {}
_digests_lock = threading.Lock()


def etag_of(path: Path) -> str:
    """`"sha256-<hex>"` of the file, hashed once per (path, size, mtime)."""
    stat = path.stat()
    key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    etag = f'"sha256-{digest.hexdigest()}"'
    with _digests_lock:
        _digests[key] = etag
    return etag


def graph_file(registry: ModelRegistry, version: str, graph: Graph) -> GraphFile:
    """The graph of `version` (blocking: a first export takes seconds; call from a thread).

    Raises ModelNotFoundError for a name that is no registry version, ArtifactError for a
    version whose artifact cannot be trusted (it is verified before its cached export is
    used, as the engine loader does)."""
    if version == FP32:
        path = weights_path(registry.home)
    elif version in registry.version_names():
        graphs = cached_export(verify(registry.root / version), root=registry.home)
        path = graphs.full_resolution if graph is Graph.FULL_RESOLUTION else graphs.general
    else:
        raise ModelNotFoundError(
            f"unknown model version {version!r}: expected 'fp32' or one of the registry "
            f"versions {registry.version_names()}"
        )
    return GraphFile(path, etag_of(path))
