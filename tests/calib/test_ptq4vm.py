"""PTQ4VM end to end (fast profile): BIQ + GAC + OFA, absorption, the artifact, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ptq4vm_core.artifact import load_artifact, read_manifest, save_artifact
from ptq4vm_core.calib.calibrate import CalibrationResult, Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import CalibrationSet, build_calibration_set
from ptq4vm_core.calib.methods import Base, Method, Profile
from ptq4vm_core.cli.main import app
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.model import quant_layers

runner = CliRunner()


@pytest.fixture(scope="module")
def data(sample_clip: Path) -> CalibrationSet:
    return build_calibration_set([sample_clip], frames=8, seq_len=4, max_side=96)


@pytest.fixture(scope="module")
def brecq_w4a4(rvm: MattingNetwork, data: CalibrationSet) -> CalibrationResult:
    """The BIQ stage, made cheap: MinMax ranges stand in for the reconstruction."""
    return calibrate(rvm, data, bits="w4a4", method=Method.MINMAX, profile=Profile.FAST)


@pytest.fixture(scope="module")
def ptq4vm_w4a4(
    rvm: MattingNetwork, data: CalibrationSet, brecq_w4a4: CalibrationResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> CalibrationResult:  # fmt: skip
    return calibrate(
        rvm, data, bits="w4a4", method=Method.PTQ4VM, profile=Profile.FAST,
        ptq4vm=Ptq4vmOptions(base=Base.BRECQ), biq_model=brecq_w4a4.model,  # type: ignore[arg-type]
        flow_cache=tmp_path_factory.mktemp("flow"),
    )  # fmt: skip


def test_global_stage_lowers_the_alpha_error(
    ptq4vm_w4a4: CalibrationResult, brecq_w4a4: CalibrationResult
) -> None:
    report = ptq4vm_w4a4.gac
    assert report is not None
    assert report.layers == 82
    # The end of the schedule is kept only if it scores no worse than the start on the whole
    # calibration set: the global stage never ends worse than it started.
    assert report.mse_end + 0.02 * report.ofa_end <= report.mse_start + 0.02 * report.ofa_start
    assert 0 <= report.best_step <= report.iters
    cfg = ptq4vm_w4a4.config
    assert cfg["ptq4vm"]["base"] == "brecq"
    assert cfg["ptq4vm"]["biq_reused"]
    assert cfg["gac"]["ofa_weight"] > 0
    assert 0.5 < cfg["flow"]["reliable"] <= 1.0
    # The BIQ model it started from is left as it was.
    assert all(layer.affine is None for layer in quant_layers(brecq_w4a4.model).values())
    # Absorbed: no correction remains, integers stay on the symmetric 4-bit grid.
    for name, layer in quant_layers(ptq4vm_w4a4.model).items():
        assert layer.affine is None
        qmax = 2 ** (layer.policy.weight.bits - 1) - 1
        assert layer.integer_weight().abs().max() <= qmax, name


def test_absorbed_model_saves_and_loads_bit_exact(
    ptq4vm_w4a4: CalibrationResult, data: CalibrationSet, tmp_path: Path
) -> None:
    out = save_artifact(ptq4vm_w4a4, data, tmp_path / "a")
    manifest = read_manifest(out)
    assert manifest.method == "ptq4vm"
    assert manifest.raw["config"]["gac_report"]["mse_end"] == ptq4vm_w4a4.gac.mse_end  # type: ignore[union-attr]
    loaded = load_artifact(out).model
    frames = data.frames[0]
    with torch.no_grad():
        expected = ptq4vm_w4a4.model(frames[None], None, 1.0).pha
        got = loaded(frames[None], None, 1.0).pha
    assert torch.equal(got, expected)


def test_no_gac_no_ofa_is_the_base(
    rvm: MattingNetwork, data: CalibrationSet, brecq_w4a4: CalibrationResult
) -> None:
    result = calibrate(
        rvm, data, bits="w4a4", method=Method.PTQ4VM, profile=Profile.FAST,
        ptq4vm=Ptq4vmOptions(base=Base.BRECQ, gac=False, ofa=False),
        biq_model=brecq_w4a4.model,  # type: ignore[arg-type]
    )  # fmt: skip
    assert result.gac is None
    frames = data.frames[1][None]
    with torch.no_grad():
        assert torch.equal(
            result.model(frames, None, 1.0).pha, brecq_w4a4.model(frames, None, 1.0).pha
        )


def test_reused_biq_must_match_the_bits(
    rvm: MattingNetwork, data: CalibrationSet, brecq_w4a4: CalibrationResult
) -> None:
    with pytest.raises(ValueError, match="same bits"):
        calibrate(
            rvm, data, bits="w8a8", method=Method.PTQ4VM, profile=Profile.FAST,
            biq_model=brecq_w4a4.model,  # type: ignore[arg-type]
        )  # fmt: skip


def test_cli_ptq4vm(
    sample_clip: Path, weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"  # the flow cache goes there; the weights are the real ones
    home.mkdir()
    (home / "weights").symlink_to(weights_file.parent)
    monkeypatch.setenv("PTQ4VM_HOME", str(home))
    out = tmp_path / "p"
    result = runner.invoke(
        app,
        ["calibrate", "--clips", str(sample_clip), "--bits", "w8a8", "--method", "ptq4vm",
         "--no-ofa", "--profile", "fast", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "qdrop+gac w8a8" in result.output
    assert "global stage: alpha MSE" in result.output
    manifest = read_manifest(out)
    assert manifest.raw["config"]["ptq4vm"] == {
        "base": "qdrop", "gac": True, "ofa": False, "ofa_weight": 0.02,
        "mask_occlusions": True, "biq_reused": False,
    }  # fmt: skip
    assert manifest.raw["config"]["gac"]["ofa_weight"] == 0.0
