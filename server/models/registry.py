"""The model registry in `$PTQ4VM_HOME/models`: versions, the active one, loaded engines.

Layout: one artifact directory per version (`models/<version>/manifest.json` ...) and the
pointer `models/active.json` (`{"version": ..., "activated_at": ...}`), replaced atomically.
`fp32` is always a version: the published FP32 model, active while the registry is empty.

Engines are loaded on demand and reference-counted: a session holds a `ModelLease` on the
version it started with, so that version stays loaded (DESIGN 4.3.7) however often another is
activated; versions nobody holds are unloaded, least recently used first, beyond
`max_idle` of them (the active version is never unloaded). Every method is thread-safe and
may block (loading takes seconds): call them from a worker thread, not the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptq4vm_core.artifact import ArtifactError, read_manifest, verify_artifact
from ptq4vm_core.artifact.manifest import VERSION_NAME_PATTERN
from ptq4vm_core.artifact.verify import Verified, verify
from ptq4vm_core.engine import FP32, Engine, EngineKind, ModelNotFoundError, load_engine
from ptq4vm_core.files import replace_file
from server.metrics import Metrics

logger = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"


Loader = Callable[[str | Verified, Path], Engine]
"""Makes an engine for `fp32` or a verified artifact, with the given cache root."""


def load_engine_at(model: str | Verified, home: Path) -> Engine:
    """The deployed engine (AUTO) for `model`, with `home` as the cache root."""
    return load_engine(model, root=home)


def engine_loader(kind: EngineKind) -> Loader:
    """A registry loader running every model on `kind` (`PTQ4VM_ENGINE`, `serve --engine`)."""
    if kind is EngineKind.AUTO:
        return load_engine_at
    return lambda model, home: load_engine(model, kind, root=home)


class ModelUnavailableError(Exception):
    """A version exists but cannot be loaded or activated (e.g. a corrupt artifact)."""


@dataclass
class _Entry:
    """One version's engine; `lock` serialises its loading."""

    refs: int = 0
    engine: Engine | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelLease:
    """A version's engine, kept loaded until `release()` (idempotent; also a context manager)."""

    def __init__(self, registry: ModelRegistry, version: str, engine: Engine) -> None:
        self.version = version
        self.engine = engine
        self._registry: ModelRegistry | None = registry

    def release(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            registry._release(self.version)

    def __enter__(self) -> ModelLease:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class ModelRegistry:
    def __init__(
        self,
        home: Path,
        *,
        metrics: Metrics | None = None,
        max_idle: int = 1,
        override: str | None = None,
        loader: Loader = load_engine_at,
    ) -> None:
        """`home` is the cache root (weights and `models/`); `override` names the version that
        is active for this process until another is activated (`ptq4vm serve --model`);
        `loader(model, home)` makes an engine for a verified model (tests may swap it)."""
        self.home = home
        self.root = home / "models"
        self._metrics = metrics
        self._max_idle = max_idle
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._override = override
        self._loader = loader
        self._active = self._read_pointer()

    # Versions --------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        """Registered versions (artifact directories), oldest name first; `fp32` not included."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and re.fullmatch(VERSION_NAME_PATTERN, p.name)
            and p.name != FP32
            and (p / "manifest.json").is_file()
        )

    def describe(self) -> list[dict[str, Any]]:
        """Every version with what its manifest says; a broken manifest gives `error`."""
        active = self.active()
        with self._lock:
            loaded = {name for name, e in self._entries.items() if e.engine is not None}
        rows: list[dict[str, Any]] = [
            {"version": FP32, "bits": "fp32", "active": active == FP32, "loaded": FP32 in loaded}
        ]
        for name in self.version_names():
            row: dict[str, Any] = {"version": name, "active": active == name}
            row["loaded"] = name in loaded
            try:
                manifest = read_manifest(self.root / name)
            except ArtifactError as exc:
                row["error"] = str(exc)
            else:
                row.update(
                    bits=manifest.bits,
                    method=manifest.method.value,
                    profile=manifest.profile.value,
                    created=manifest.created.astimezone(UTC).isoformat(),
                    metrics=manifest.metrics,
                )
            rows.append(row)
        return rows

    def metrics_of(self, version: str) -> dict[str, Any]:
        """The manifest metrics of registry version `version` ({} for fp32 and others)."""
        if version not in self.version_names():
            return {}
        try:
            return dict(read_manifest(self.root / version).metrics)
        except ArtifactError:
            return {}

    def path_of(self, version: str) -> str:
        """What loads `version` in another process: a registry version's artifact directory;
        otherwise the name itself (fp32, or the path `--model` gave)."""
        return str(self.root / version) if version in self.version_names() else version

    def exists(self, version: str) -> bool:
        return version == FP32 or version in self.version_names() or version == self._override

    def register(self, source: Path, version: str | None = None, *, activate: bool = False) -> str:
        """Adds the artifact directory `source` as `version` (default: its manifest's
        version name). A `source` inside `models/` is moved, anything else copied; either way
        the version appears at once, complete. Returns the version name."""
        manifest = verify_artifact(source)
        name = version or manifest.version_name
        if name == FP32 or not re.fullmatch(VERSION_NAME_PATTERN, name):
            raise ValueError(f"version name {name!r} is not allowed")
        target = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if target.exists():
                raise ValueError(f"version {name!r} already exists in {self.root}")
            if source.resolve().parent == self.root.resolve():
                os.replace(source, target)
            else:
                staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=self.root))
                try:
                    shutil.copytree(source, staging, dirs_exist_ok=True)
                    os.replace(staging, target)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        logger.info(
            "registered model version %s (%s %s)", name, manifest.method.value, manifest.bits
        )
        if activate:
            self.activate(name)
        return name

    # Activation ------------------------------------------------------------------------------

    def active(self) -> str:
        """The version new sessions get when they name none."""
        with self._lock:
            return self._override or self._active

    def activate(self, version: str) -> None:
        """Makes `version` active: it is verified and loaded first, so a corrupt version is
        refused (ModelUnavailableError, reason logged) and the switch itself is one atomic
        rename of the pointer file. Open sessions keep the version they hold."""
        if not self.exists(version):
            raise ModelNotFoundError(f"unknown model version {version!r}")
        # The lease is held across the switch, so the new version is never unloaded between.
        with self.acquire(version) as lease:
            engine_name = lease.engine.name
            with self._lock:
                self._write_pointer(version)
                self._active, self._override = version, None
        if self._metrics is not None:
            self._metrics.set_active_model(version, engine_name)
        logger.info("activated model version %s (%s)", version, engine_name)

    def fall_back(self, reason: str) -> None:
        """Serve fp32 for now because the active version cannot be served (the pointer file is
        left as it is, for an operator to look at)."""
        with self._lock:
            broken, self._active, self._override = self.active(), FP32, None
        logger.error(
            "active model %s cannot be served (%s); serving %s instead", broken, reason, FP32
        )

    def _read_pointer(self) -> str:
        file = self.root / ACTIVE_FILE
        if not file.is_file():
            return FP32
        try:
            version = str(json.loads(file.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("ignoring unreadable %s (%s); serving %s", file, exc, FP32)
            return FP32
        if not self.exists(version):
            logger.error("%s names missing version %r; serving %s", file, version, FP32)
            return FP32
        return version

    def _write_pointer(self, version: str) -> None:
        data = {"version": version, "activated_at": datetime.now(UTC).isoformat()}
        replace_file(self.root / ACTIVE_FILE, json.dumps(data).encode())

    # Loading ---------------------------------------------------------------------------------

    def acquire(self, version: str | None = None) -> ModelLease:
        """A lease on `version` (None = the active one), loading it if needed.

        Raises ModelNotFoundError for a name that is no version, ModelUnavailableError when
        the version cannot be loaded (the reason is logged and in the message)."""
        name = version or self.active()
        if not self.exists(name):
            raise ModelNotFoundError(
                f"unknown model {name!r}: expected 'fp32' or one of the registry versions "
                f"{self.version_names()}"
            )
        with self._lock:
            entry = self._entries.setdefault(name, _Entry())
            entry.refs += 1
        try:
            with entry.lock:
                if entry.engine is None:
                    entry.engine = self._load(name)
                engine = entry.engine
        except BaseException:
            with self._lock:
                entry.refs -= 1
                if entry.refs == 0 and entry.engine is None:
                    self._entries.pop(name, None)
            raise
        with self._lock:
            self._entries.move_to_end(name)
            self._update_gauge()
        return ModelLease(self, name, engine)

    def loaded(self) -> list[str]:
        with self._lock:
            return [name for name, e in self._entries.items() if e.engine is not None]

    def _release(self, version: str) -> None:
        with self._lock:
            entry = self._entries.get(version)
            if entry is not None:
                entry.refs -= 1
            self._evict()

    def _evict(self) -> None:
        active = self.active()
        idle = [n for n, e in self._entries.items() if e.refs == 0 and n not in (active, FP32)]
        for name in idle[: max(0, len(idle) - self._max_idle)]:
            del self._entries[name]
            logger.info("unloaded model version %s (no session uses it)", name)
        self._update_gauge()

    def _update_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.models_loaded.set(
                sum(1 for e in self._entries.values() if e.engine is not None)
            )

    def _load(self, name: str) -> Engine:
        started = time.monotonic()
        target: str | Verified = name
        try:
            if name != FP32:  # verified once, here; the loader, export and engines take it
                path = self.root / name if name in self.version_names() else Path(name)
                target = verify(path.absolute())
            engine = self._loader(target, self.home)
        except ModelNotFoundError:
            raise
        except Exception as exc:
            logger.error("refusing model version %s: %s", name, exc)
            raise ModelUnavailableError(f"model {name!r} cannot be loaded: {exc}") from exc
        logger.info(
            "loaded model version %s (%s) in %.2f s", name, engine.name, time.monotonic() - started
        )
        return engine
