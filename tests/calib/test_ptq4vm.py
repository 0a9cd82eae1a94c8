"""PTQ4VM end to end (fast profile): BIQ + GAC + OFA, absorption, the artifact, the CLI."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ptq4vm_core.artifact import load_artifact, read_manifest, save_artifact
from ptq4vm_core.calib.calibrate import CalibrationResult, Ptq4vmOptions, calibrate
from ptq4vm_core.calib.data import CalibrationSet, build_calibration_set
from ptq4vm_core.calib.gac import GacConfig, alpha_targets, global_correction, score
from ptq4vm_core.calib.methods import Base, Method, Profile
from ptq4vm_core.cli.main import app
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.model.recipe import conv_names
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import quant_layers, set_mode

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


def _quantized_copy(model: nn.Module) -> MattingNetwork:
    copied = copy.deepcopy(model)
    assert isinstance(copied, MattingNetwork)
    set_mode(copied, QuantMode.QUANTIZED)
    return copied


def test_global_stage_lowers_the_alpha_error(rvm: MattingNetwork, data: CalibrationSet) -> None:
    """Trained on exactly the objective it is judged on (one sequence, every step on all of its
    frames, no OFA), GAC must lower it, move gamma off 1 in every layer and report the truth.
    It starts from MinMax W8A8: MinMax W4A4's alpha is noise (MSE ~0.3), which GAC's few
    corrections cannot turn into a matte, so there it rightly keeps its start."""
    tiny = replace(
        data, frames=data.frames[:1, :3], alphas=data.alphas[:1, :3], has_alpha=data.has_alpha[:1]
    )
    start = calibrate(rvm, tiny, bits="w8a8", method=Method.MINMAX, profile=Profile.FAST)
    target = alpha_targets(rvm, tiny)
    before = _quantized_copy(start.model)
    model = _quantized_copy(start.model)
    report = global_correction(model, rvm, tiny, GacConfig(iters=10, window=tiny.seq_len))
    assert report.best_step == report.iters == 10  # the end of the schedule beat the start
    mse_before, _ = score(before, tiny, target, None)
    mse_after, _ = score(model, tiny, target, None)  # the absorbed model, recomputed here
    assert mse_after < 0.9 * mse_before
    assert (report.mse_start, report.mse_end) == pytest.approx((mse_before, mse_after), rel=1e-4)
    assert report.layers == len(conv_names())
    # Absorbed, gamma is the ratio of a layer's weight scales to BIQ's, one for all channels.
    for name, layer in quant_layers(model).items():
        old = quant_layers(before)[name].weight_quantizer.base.scale.detach()
        ratio = layer.weight_quantizer.base.scale.detach() / old
        torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), msg=name)
        assert abs(float(ratio.mean()) - 1) > 1e-4, name


def test_ptq4vm_runs_and_absorbs_the_global_stage(
    ptq4vm_w4a4: CalibrationResult, brecq_w4a4: CalibrationResult
) -> None:
    report = ptq4vm_w4a4.gac
    assert report is not None
    assert report.layers == len(conv_names())
    assert report.best_step in (0, report.iters)
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
