"""Corrupt artifacts in a live server's registry (issue 9), beyond what tests/server covers
(a corrupt version refused at session start, a corrupt active version at start-up): a version
corrupted on disk while sessions use it, activation of a corrupt version through the admin
API, and versions whose manifest is garbage or whose tensors are missing. Nothing answers
500, the active model never moves to a broken version, and other sessions stream on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ptq4vm_core.artifact import MANIFEST_FILE, TENSORS_FILE
from tests.server.conftest import Assets, RunningServer, ServerFactory, make_home
from tests.server.test_admin import AUTH, TOKEN
from tests.server.test_registry import corrupt
from tests.server.test_stream_errors import START, Witness, expect_error_then_close, raw


@pytest.fixture(scope="module")
def broken(
    start_server: ServerFactory,
    tmp_path_factory: pytest.TempPathFactory,
    assets: Assets,
    quantized_artifact: Path,
) -> RunningServer:
    """v1 (sound; made active), v2 (tensors with a flipped byte), v3 (a manifest cut short),
    v4 (its tensors file gone)."""
    home = make_home(tmp_path_factory.mktemp("broken"), assets)
    for name in ("v1", "v2", "v3", "v4"):
        shutil.copytree(quantized_artifact, home / "models" / name)
    corrupt(home / "models" / "v2")
    manifest = home / "models" / "v3" / MANIFEST_FILE
    manifest.write_text(manifest.read_text()[:100])
    (home / "models" / "v4" / TENSORS_FILE).unlink()
    # No idle version stays loaded: a version nobody uses is verified again at its next load.
    server = start_server(home, admin_token=TOKEN, max_idle_models=0)
    with server.client() as http:
        assert http.post("/admin/models/v1/activate", headers=AUTH).status_code == 200
    return server


@pytest.mark.parametrize("version", ["v2", "v3", "v4"])
def test_a_corrupt_version_is_never_activated(
    broken: RunningServer, clip_rgb: list[NDArray[np.uint8]], version: str
) -> None:
    with Witness(broken, clip_rgb[:4]) as witness, broken.client() as http:
        refused = http.post(f"/admin/models/{version}/activate", headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert version in refused.json()["detail"]
        assert http.get("/v1/models").json()["active"] == "v1"
        with raw(broken) as ws:
            ws.send(json.dumps({**START, "model": version}))
            expect_error_then_close(ws, "model_unavailable", 1011)
        witness.check()


def test_versions_list_names_what_is_wrong(broken: RunningServer) -> None:
    with broken.client() as http:
        for route, headers in (("/v1/models", {}), ("/admin/models", AUTH)):
            answer = http.get(route, headers=headers)
            assert answer.status_code == 200, answer.text
            rows = {r["version"]: r for r in answer.json()["versions"]}
            assert set(rows) == {"fp32", "v1", "v2", "v3", "v4"}
            assert "error" in rows["v3"], rows["v3"]  # an unreadable manifest is named
            assert rows["v1"]["active"] is True
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["model"] == "v1"


def test_corrupted_under_a_live_session(
    broken: RunningServer, clip_rgb: list[NDArray[np.uint8]], tmp_path: Path
) -> None:
    """The bytes change on disk while v1 is loaded and streaming: what was verified at load
    keeps serving (open and new sessions), and the next load, here a re-activation after
    the version was unloaded, refuses it."""
    models = broken.settings.models_dir
    pristine = tmp_path / "v1"
    shutil.copytree(models / "v1", pristine)
    try:
        with broken.stream(input="rgb24") as session:
            assert session.matte(clip_rgb[0].tobytes())[0]["model"] == "v1"
            corrupt(models / "v1")
            assert session.matte(clip_rgb[1].tobytes())[0]["model"] == "v1"
            with broken.stream(input="rgb24") as new:
                assert new.matte(clip_rgb[0].tobytes())[0]["model"] == "v1"
                new.stop()
            session.stop()
        with broken.client() as http:
            assert http.post("/admin/models/fp32/activate", headers=AUTH).status_code == 200
            assert "v1" not in broken.services.registry.loaded()  # nobody holds it now
            refused = http.post("/admin/models/v1/activate", headers=AUTH)
            assert refused.status_code == 409, refused.text
            assert "sha256" in refused.json()["detail"]
            assert http.get("/v1/models").json()["active"] == "fp32"
    finally:
        shutil.rmtree(models / "v1")
        shutil.copytree(pristine, models / "v1")
        with broken.client() as http:
            assert http.post("/admin/models/v1/activate", headers=AUTH).status_code == 200
