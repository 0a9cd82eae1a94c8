"""The calibration tests' shared artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ptq4vm_core.cli.main import app


@pytest.fixture(scope="session")
def qdrop_artifact(tmp_path_factory: pytest.TempPathFactory, sample_clip: Path) -> Path:
    """QDrop W8A8 at the fast profile on the sample clip, through the CLI: the artifact the
    calibrate tests check, and the BIQ start `test_cli_ptq4vm` runs the global stage on."""
    out = tmp_path_factory.mktemp("artifacts") / "qdrop-w8a8"
    result = CliRunner().invoke(
        app,
        ["calibrate", "--clips", str(sample_clip), "--bits", "w8a8", "--method", "qdrop",
         "--profile", "fast", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out
