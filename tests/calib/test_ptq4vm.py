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
from ptq4vm_core.calib.gac import (
    GacConfig,
    _trainables,
    alpha_targets,
    global_correction,
    score,
    split,
)
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


def test_split_holds_out_sequences_it_never_trains_on() -> None:
    train, held = split(8, 0.25)
    assert held.tolist() == [3, 7]
    assert train.tolist() == [0, 1, 2, 4, 5, 6]
    train, held = split(3, 0.25)
    assert held.tolist() == [2]
    assert train.tolist() == [0, 1]
    every = list(range(5))
    assert [t.tolist() for t in split(5, 0.0)] == [every, every]
    assert [t.tolist() for t in split(1, 0.5)] == [[0], [0]]


def test_gac_learns_what_holds_on_sequences_it_did_not_train_on(
    rvm: MattingNetwork, data: CalibrationSet
) -> None:
    """From MinMax W8A8 on two sequences, GAC trains on the first only (holdout 0.5, no OFA):
    it must move every layer (gamma off 1) and lower the alpha error of the second, which it
    never saw, by 10%, as the report says, measured here again on the absorbed model. A stage
    that learns nothing, or keeps its start, fails."""
    assert data.num_sequences == 2
    start = calibrate(rvm, data, bits="w8a8", method=Method.MINMAX, profile=Profile.FAST)
    target = alpha_targets(rvm, data)
    before = _quantized_copy(start.model)
    model = _quantized_copy(start.model)
    # MinMax's 8-bit error is large: the 4-bit rate for gamma and beta everywhere.
    cfg = GacConfig(iters=10, window=data.seq_len, holdout=0.5, lr_fine=1e-2)
    report = global_correction(model, rvm, data, cfg)
    assert report.best_step == report.iters == 10
    assert report.val_sequences == 1
    held = torch.tensor([1])
    val_before, _ = score(before, data, target, None, sequences=held)
    val_after, _ = score(model, data, target, None, sequences=held)  # absorbed, recomputed
    assert val_after < 0.9 * val_before
    assert (report.val_start, report.val_end) == pytest.approx((val_before, val_after), rel=1e-4)
    assert report.layers == len(conv_names())
    for name, layer in quant_layers(model).items():
        old = quant_layers(before)[name]
        # Absorbed, gamma is the ratio of a layer's weight scales to BIQ's, one for all channels.
        ratio = (
            layer.weight_quantizer.base.scale.detach() / old.weight_quantizer.base.scale.detach()
        )
        torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), msg=name)
        assert abs(float(ratio.mean()) - 1) > 1e-4, name


def test_gac_shift_trains_the_biases_in_place(rvm: MattingNetwork, data: CalibrationSet) -> None:
    """With lr_bias > 0 the continuous shift is each conv's own float bias: every bias gets a
    gradient from the alpha error, and what the stage leaves there is what the layer (and the
    artifact, which stores the float bias) computes with; afterwards nothing requires grad."""
    start = calibrate(rvm, data, bits="w8a8", method=Method.MINMAX, profile=Profile.FAST)
    model = _quantized_copy(start.model)
    _, _, biases, _ = _trainables(model, affine=True)
    with_bias = [layer for layer in quant_layers(model).values() if layer.bias is not None]
    assert len(biases) == len(with_bias) == len(conv_names()) - 2  # two convs have no bias
    for bias in biases:
        bias.requires_grad_(True)
    target = alpha_targets(rvm, data)
    out = model(data.frames[:1, :2], None, 1.0).pha
    (out - target[:1, :2]).pow(2).mean().backward()
    assert all(b.grad is not None and float(b.grad.abs().max()) > 0 for b in biases)
    cfg = GacConfig(iters=3, window=data.seq_len, lr_bias=1e-2, holdout=0.0)
    trained = _quantized_copy(start.model)
    report = global_correction(trained, rvm, data, cfg)
    layers = quant_layers(trained).values()
    assert not any(layer.bias.requires_grad for layer in layers if layer.bias is not None)
    before = {n: layer.bias for n, layer in quant_layers(start.model).items()}
    moved = [
        not torch.equal(after, old)
        for name, layer in quant_layers(trained).items()
        if (after := layer.bias) is not None and (old := before[name]) is not None
    ]
    assert all(moved) if report.best_step else not any(moved)


def test_the_global_stage_trains_on_ground_truth_where_a_clip_has_it(
    rvm: MattingNetwork, data: CalibrationSet
) -> None:
    truth = torch.rand_like(data.alphas)
    labelled = replace(data, alphas=truth, has_alpha=torch.tensor([True, False]))
    target = alpha_targets(rvm, labelled)
    assert torch.equal(target[0], truth[0])
    torch.testing.assert_close(target[1], alpha_targets(rvm, data)[1], rtol=0, atol=0)
    assert not torch.equal(target[1], truth[1])


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
    sample_clip: Path,
    weights_file: Path,
    qdrop_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The global stage through the CLI, on the QDrop artifact's BIQ (`--biq-from`: BIQ itself
    runs in the library tests and in tests/calib/conftest.py's QDrop calibration)."""
    home = tmp_path / "home"  # the flow cache goes there; the weights are the real ones
    home.mkdir()
    (home / "weights").symlink_to(weights_file.parent)
    (home / "clips").symlink_to(sample_clip.parent)  # the synthetic clips are made from it
    monkeypatch.setenv("PTQ4VM_HOME", str(home))
    out = tmp_path / "p"
    result = runner.invoke(
        app,
        ["calibrate", "--clips", str(sample_clip), "--bits", "w8a8", "--method", "ptq4vm",
         "--no-ofa", "--profile", "fast", "--synthetic-backgrounds", "1", "--out", str(out),
         "--biq-from", str(qdrop_artifact)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "qdrop+gac w8a8" in result.output
    assert "global stage: alpha MSE" in result.output
    manifest = read_manifest(out)
    assert manifest.raw["config"]["ptq4vm"] == {
        "base": "qdrop", "gac": True, "ofa": False, "ofa_weight": 0.02,
        "mask_occlusions": True, "biq_reused": True,
    }  # fmt: skip
    assert manifest.raw["config"]["gac"]["ofa_weight"] == 0.0
    clips = manifest.raw["calibration"]["clips"]
    assert [c["ground_truth"] for c in clips] == [False, True]  # the sample, one synthetic
    assert (home / "cache" / "synthetic").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ptq4vm", "--base", "brecq"], "calibrated with qdrop"),
        (["--method", "qdrop"], "apply to --method ptq4vm only"),
    ],
)
def test_cli_biq_from_refuses_what_does_not_fit(
    sample_clip: Path, qdrop_artifact: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(
        app,
        ["calibrate", "--clips", str(sample_clip), "--bits", "w8a8", *args, "--profile", "fast",
         "--biq-from", str(qdrop_artifact), "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x").exists()
