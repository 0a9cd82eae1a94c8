"""The service never gets slower by itself (issue 25): a built model replaces the served one
only where it is faster on this CPU (`server.calibration.speed`); an admin activation overrides and
reports the measured ratio."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ptq4vm_core.engine import FP32, load_engine
from server.calibration.default_build import DefaultModelBuilder
from server.calibration.speed import SpeedReport, SpeedSpec, measure_speed
from server.metrics import Metrics
from server.models.registry import ModelRegistry
from tests.server.conftest import Assets, ServerFactory, make_home, settings_for
from tests.server.test_admin import AUTH, TOKEN, submit, wait_for


def report(candidate_fps: float, incumbent_fps: float) -> SpeedReport:
    return SpeedReport(
        size="512x288", downsample_ratio=1.0, cpu_class="AVX2-only", candidate_version="v1",
        candidate_engine="openvino-int8-w8a8", candidate_fps=candidate_fps,
        incumbent_version=FP32, incumbent_engine="openvino-fp32", incumbent_fps=incumbent_fps,
    )  # fmt: skip


def test_both_models_are_timed_in_the_same_rounds(quantized_artifact: Path, assets: Assets) -> None:
    spec = SpeedSpec(incumbent_version=FP32, incumbent=FP32, width=176, height=144, frames=4,
                     rounds=2)  # fmt: skip
    result = measure_speed("v1", load_engine(str(quantized_artifact)), load_engine(FP32), spec)
    assert result.candidate_fps > 0
    assert result.incumbent_fps > 0
    assert result.ratio == pytest.approx(result.candidate_fps / result.incumbent_fps)
    assert result.faster is (result.candidate_fps > result.incumbent_fps)
    assert (result.size, result.candidate_version, result.incumbent_engine) == (
        "176x144", "v1", "openvino-fp32",
    )  # fmt: skip
    line = result.describe()
    assert f"{result.candidate_fps:.1f} fps" in line
    assert f"{result.incumbent_fps:.1f} fps" in line


@pytest.mark.parametrize(("candidate_fps", "activated"), [(8.0, False), (12.0, True)])
def test_the_default_build_keeps_the_faster_model(
    tmp_path: Path, assets: Assets, quantized_artifact: Path, candidate_fps: float,
    activated: bool,
) -> None:  # fmt: skip
    home = make_home(tmp_path / "home", assets)
    settings = settings_for(home, speed_check=True)
    registry = ModelRegistry(home)
    builder = DefaultModelBuilder(settings, registry, Metrics())
    staged = home / "models" / ".staged"
    shutil.copytree(quantized_artifact, staged)
    builder.version = registry.register(staged, "v1")
    builder._decide(report(candidate_fps, 10.0))
    info: dict[str, Any] = builder.describe()
    assert registry.active() == ("v1" if activated else FP32)
    assert info["activated"] is activated
    assert info["speed"]["candidate_fps"] == candidate_fps
    assert info["speed"]["incumbent_fps"] == 10.0
    assert info["speed"]["ratio"] == pytest.approx(candidate_fps / 10.0)
    assert f"{candidate_fps:.1f} fps" in info["decision"]
    assert "10.0 fps" in info["decision"]
    assert info["decision"].startswith("activated" if activated else "not activated")


def test_admin_activation_overrides_and_reports_the_ratio(
    start_server: ServerFactory, assets: Assets, quantized_artifact: Path, tmp_path: Path
) -> None:
    home = make_home(tmp_path / "home", assets)
    shutil.copytree(quantized_artifact, home / "models" / "v1")
    server = start_server(home, admin_token=TOKEN, speed_check=True)
    with server.client() as http:
        done = http.post("/admin/models/v1/activate?measure=true", headers=AUTH)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["active"] == "v1"  # activated whatever the figures: the override
        speed = body["speed"]
        assert (speed["candidate_version"], speed["incumbent_version"]) == ("v1", FP32)
        assert speed["ratio"] == pytest.approx(speed["candidate_fps"] / speed["incumbent_fps"])
        # Already active: nothing to compare; by default nothing is timed (a rollback is
        # immediate) and a version built without a speed check has no figures to report.
        again = http.post("/admin/models/v1/activate?measure=true", headers=AUTH)
        assert again.json() == {"active": "v1"}
        assert http.post("/admin/models/fp32/activate", headers=AUTH).json() == {"active": FP32}


def test_an_admin_job_activates_only_where_faster(
    start_server: ServerFactory, assets: Assets
) -> None:
    """The child times the candidate against the active model; the job activates it only if
    the figures say it is faster, and reports them either way."""
    server = start_server(admin_token=TOKEN, min_free_bytes=0, speed_check=True,
                          idle_timeout_s=1800.0)  # fmt: skip
    with server.client() as http:
        job = wait_for(http, submit(http, assets.clip, activate="true").json()["id"],
                       {"done", "failed"})  # fmt: skip
        assert job["state"] == "done", job
        speed = job["metrics"]["speed"]
        assert speed["incumbent_version"] == FP32
        faster = speed["candidate_fps"] > speed["incumbent_fps"]
        assert job["activated"] is faster, job
        assert http.get("/v1/models").json()["active"] == (job["version"] if faster else FP32)
        if not faster:
            assert "not faster" in job["error"]
        assert job["int8_target"] in ("vnni", "avx2")
