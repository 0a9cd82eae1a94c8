"""Where exported graphs are kept: one export per artifact content, reused until it changes.

`$PTQ4VM_HOME/engines/<key>/` holds an export (`export.ExportedGraphs`) and, under
`optimized/`, the graphs as ONNX Runtime optimised them for this machine. The key hashes the
artifact's tensor file (its sha256, recorded in the manifest and checked on every load; the
tensor file also binds the manifest's policy through its digest), the exporter version and
the range calibration, so an artifact whose tensors change gets a new export, and copies of
one artifact (e.g. in the registry and in a working directory) share one. Exports of one key
are serialised by a lock file, so concurrent processes export once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

from ptq4vm_core.artifact.manifest import TENSORS_FILE, read_manifest
from ptq4vm_core.artifact.verify import Verified
from ptq4vm_core.engine.export.build import (
    EXPORT_VERSION,
    FULL_RESOLUTION,
    GENERAL,
    GRAPH_FILES,
    REPORT,
    ExportedGraphs,
    export_artifact,
)
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)

ENGINES_DIR = "engines"
OPTIMIZED_DIR = "optimized"


def export_key(artifact: Verified | Path) -> str:
    manifest = artifact.manifest if isinstance(artifact, Verified) else read_manifest(artifact)
    identity = {"tensors_sha256": manifest.files[TENSORS_FILE], "export_version": EXPORT_VERSION}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{manifest.bits}-{digest[:24]}"


def cached_export(
    artifact: Verified | Path,
    *,
    root: Path | None = None,
    cache: Path | None = None,
) -> ExportedGraphs:
    """The export of `artifact`, made now if the cache has none for its current content.
    Pass the `Verified` artifact where it was verified (the cache key is then its checked
    tensor digest, and an export verifies nothing again); a bare path is keyed by its manifest,
    unverified: verify before trusting a cached export. `root`: the cache root (weights,
    sample clip); `cache`: where exports are kept (default `<root>/engines`)."""
    engines = cache or (root or cache_root()) / ENGINES_DIR
    if not isinstance(artifact, Verified):
        artifact = Path(artifact)
    key = export_key(artifact)
    directory = engines / key
    engines.mkdir(parents=True, exist_ok=True)
    with (engines / f".{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = _read_report(directory)
        if report is None:
            if directory.exists():  # an incomplete or foreign directory: replace it
                _remove(directory)
            where = artifact.path if isinstance(artifact, Verified) else artifact
            logger.info("exporting %s to the int8 graph (once per artifact content)", where)
            return export_artifact(artifact, directory, root=root)
    return ExportedGraphs(directory, directory / GENERAL, directory / FULL_RESOLUTION, report)


def optimized_path(graph: Path, tag: str) -> Path:
    """Where ONNX Runtime's optimised form of an exported `graph` is kept for `tag`
    (`ort_engine.hardware_tag`)."""
    return graph.parent / OPTIMIZED_DIR / f"{graph.stem}.{tag}.onnx"


def _read_report(directory: Path) -> dict[str, object] | None:
    try:
        report = json.loads((directory / REPORT).read_text())
    except (OSError, ValueError):
        return None
    complete = all((directory / name).is_file() for name in GRAPH_FILES)
    if not complete or not isinstance(report, dict):
        return None
    if report.get("export_version") != EXPORT_VERSION:
        return None
    return report


def _remove(directory: Path) -> None:
    shutil.rmtree(directory)
