"""The model registry: versions, atomic activation, pinning, unloading, corrupt artifacts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from ptq4vm_core.artifact import TENSORS_FILE
from ptq4vm_core.artifact import verify as verify_module
from ptq4vm_core.artifact.verify import Verified
from ptq4vm_core.engine import ModelNotFoundError
from server.models.registry import ACTIVE_FILE, ModelRegistry, ModelUnavailableError
from tests.server.conftest import Assets, make_home


@pytest.fixture
def home(tmp_path: Path, assets: Assets) -> Path:
    return make_home(tmp_path / "home", assets)


class FakeEngine:
    """Stands in for a loaded engine where only the registry's bookkeeping is under test (the
    artifact is still verified for real before the loader is called)."""

    def __init__(self, model: str) -> None:
        self.name = f"fake-{Path(model).name}"


def fake_loader(model: str | Verified, home: Path) -> Any:
    return FakeEngine(str(model.path if isinstance(model, Verified) else model))


def corrupt(artifact: Path) -> None:
    tensors = artifact / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))


def test_empty_registry_serves_fp32(home: Path) -> None:
    registry = ModelRegistry(home)
    assert registry.active() == "fp32"
    assert [row["version"] for row in registry.describe()] == ["fp32"]
    with registry.acquire() as lease:
        assert (lease.version, lease.engine.name) == ("fp32", "openvino-fp32")
    with pytest.raises(ModelNotFoundError, match="unknown model 'w9a9'"):
        registry.acquire("w9a9")


def test_register_and_activate_persist(home: Path, quantized_artifact: Path) -> None:
    registry = ModelRegistry(home, loader=fake_loader)
    version = registry.register(quantized_artifact, "v1")
    assert version == "v1"
    assert quantized_artifact.is_dir()  # copied, not moved: it was outside models/
    assert registry.active() == "fp32"
    registry.activate("v1")
    pointer = json.loads((home / "models" / ACTIVE_FILE).read_text())
    assert pointer["version"] == "v1"
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]
    assert ModelRegistry(home, loader=fake_loader).active() == "v1"  # a restart keeps it
    rows = {row["version"]: row for row in registry.describe()}
    assert rows["v1"]["active"] is True
    assert rows["v1"]["bits"] == "w8a8"
    with pytest.raises(ValueError, match="already exists"):
        registry.register(quantized_artifact, "v1")


def test_corrupt_artifact_is_refused_with_the_reason_logged(
    home: Path, quantized_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(home, loader=fake_loader)
    registry.register(quantized_artifact, "good")
    registry.activate("good")
    shutil.copytree(quantized_artifact, home / "models" / "bad")
    corrupt(home / "models" / "bad")
    with caplog.at_level(logging.ERROR, logger="server.models.registry"):
        with pytest.raises(ModelUnavailableError, match="sha256"):
            registry.acquire("bad")
        with pytest.raises(ModelUnavailableError):
            registry.activate("bad")
    assert registry.active() == "good"
    refusals = [
        r.getMessage() for r in caplog.records if "refusing model version bad" in r.getMessage()
    ]
    assert refusals
    assert "sha256" in refusals[0]


def test_pointer_to_a_missing_version_falls_back_to_fp32(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (home / "models").mkdir()
    (home / "models" / ACTIVE_FILE).write_text(json.dumps({"version": "gone"}))
    with caplog.at_level(logging.ERROR, logger="server.models.registry"):
        assert ModelRegistry(home).active() == "fp32"
    assert "gone" in caplog.text


def test_pinned_versions_stay_loaded_and_idle_ones_are_unloaded(
    home: Path, quantized_artifact: Path
) -> None:
    registry = ModelRegistry(home, max_idle=0, loader=fake_loader)
    for name in ("v1", "v2", "v3"):
        registry.register(quantized_artifact, name)
    registry.activate("v1")
    session = registry.acquire()  # a session pins v1
    assert session.version == "v1"
    registry.activate("v2")
    assert set(registry.loaded()) == {"v1", "v2"}
    registry.acquire("v3").release()  # used once, idle now: unloaded at once (max_idle=0)
    assert set(registry.loaded()) == {"v1", "v2"}
    session.release()  # the session ends: v1 is neither active nor used
    assert registry.loaded() == ["v2"]
    session.release()  # idempotent
    assert registry.loaded() == ["v2"]
    registry.acquire("fp32").release()  # fp32, the fallback, stays once loaded
    assert set(registry.loaded()) == {"v2", "fp32"}


def test_override_is_active_until_an_activation(home: Path, quantized_artifact: Path) -> None:
    registry = ModelRegistry(home, loader=fake_loader)
    registry.register(quantized_artifact, "v1", activate=True)
    pinned = ModelRegistry(home, override="fp32", loader=fake_loader)
    assert pinned.active() == "fp32"
    pinned.activate("v1")
    assert pinned.active() == "v1"


def test_serving_a_version_verifies_its_artifact_once(
    home: Path, quantized_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a version with no cached export (issue 27): one verification pass, whose value
    the saturation check, the export and the engines take."""
    (home / "engines").unlink()  # not the shared export cache: this load must export
    (home / "engines").mkdir()
    registry = ModelRegistry(home)
    registry.register(quantized_artifact, "v1")
    passes = []
    structure = verify_module._check_structure

    def counted(*args: Any) -> None:
        passes.append(args)
        structure(*args)

    monkeypatch.setattr(verify_module, "_check_structure", counted)
    with registry.acquire("v1") as lease:
        assert lease.engine.name.startswith(("openvino-int8", "ort-int8"))
    assert len(passes) == 1
