"""Calibration end to end on the real model and the sample clip (fast profile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ptq4vm_core.artifact import load_artifact, read_manifest
from ptq4vm_core.assets import SAMPLE_CLIP
from ptq4vm_core.calib.calibrate import calibrate
from ptq4vm_core.calib.data import build_calibration_set
from ptq4vm_core.calib.methods import PROFILES, Base, Method, Profile, Ptq4vmOptions, strategy
from ptq4vm_core.cli.main import app
from ptq4vm_core.engine import load_engine
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.model.recipe import CHEAP_INPUTS, SENSITIVE_INPUTS, conv_names
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import activation_layers, quant_layers
from tests.hardware import deployed_int8

runner = CliRunner()


def test_calibrate_writes_a_verified_artifact(qdrop_artifact: Path) -> None:
    manifest = read_manifest(qdrop_artifact)
    assert manifest.method == "qdrop"
    assert manifest.bits == "w8a8"
    assert manifest.calibration.clips[0].sha256 == SAMPLE_CLIP.sha256
    assert manifest.raw["calibration"]["seed"] == 0
    model = load_artifact(qdrop_artifact).model
    assert sorted(quant_layers(model)) == sorted(conv_names())  # every convolution
    # The four GRU states are quantized too.
    sites = [n for n in activation_layers(model) if n.endswith("state_in")]
    assert len(sites) == 4


def test_artifact_runs_through_matte_and_eval(
    qdrop_artifact: Path, sample_clip: Path, tmp_path: Path, clip_frames
) -> None:
    result = runner.invoke(
        app,
        ["matte", str(sample_clip), "--model", str(qdrop_artifact),
         "--alpha-out", str(tmp_path / "a")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert deployed_int8("w8a8") in result.output  # AUTO is the deployed int8 engine
    assert len(list((tmp_path / "a").glob("*.png"))) == 120
    # At 8 bits the quantized matte stays close to FP32 over a stretch of frames.
    fp, q = load_engine("fp32"), load_engine(str(qdrop_artifact))
    fp_state = q_state = None
    diffs = []
    for frame in clip_frames[:30]:
        src = frames_to_batch([frame])
        a, b = fp.infer(src, fp_state, 1.0), q.infer(src, q_state, 1.0)
        fp_state, q_state = a.state, b.state
        diffs.append(float(np.abs(a.pha - b.pha).mean()))
    assert max(diffs) < 0.02, diffs


def test_reconstruction_beats_nearest_rounding_at_4_bits(
    rvm: MattingNetwork, sample_clip: Path
) -> None:
    data = build_calibration_set([sample_clip], frames=8, seq_len=4, max_side=96)
    result = calibrate(rvm, data, bits="w4a4", method=Method.BRECQ, profile=Profile.FAST)
    improved = [r for r in result.reports if r.loss_end < r.loss_start]
    # AdaRound + LSQ lower the closure's quantized output error for most closures.
    assert len(improved) >= len(result.reports) * 2 // 3, [
        (r.name, r.loss_start, r.loss_end) for r in result.reports
    ]
    assert all(
        m.weight_quantizer.mode is QuantMode.QUANTIZED for m in quant_layers(result.model).values()
    )
    # The caller's model is untouched.
    assert not quant_layers(rvm)


def test_calibrate_rejects_bad_options(sample_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    for args, message in [
        (["--bits", "w3a3", "--method", "qdrop"], "--bits must be one of"),
        (["--bits", "w8a8", "--method", "qdrop", "--no-gac"], "apply to --method ptq4vm only"),
        # DESIGN 4.2: several clips after one --clips are accepted (the error is about bits).
        ([str(sample_clip), "--bits", "w3a3", "--method", "qdrop"], "--bits must be one of"),
    ]:
        result = runner.invoke(
            app, ["calibrate", "--clips", str(sample_clip), *args, "--profile", "fast",
                  "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not out.exists()


def test_calibrate_float_inputs_preset(sample_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cheap"
    result = runner.invoke(
        app,
        ["calibrate", "--clips", str(sample_clip), "--bits", "w8a8", "--method", "minmax",
         "--profile", "fast", "--float-inputs", "cheap", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = read_manifest(out).policy
    floats = {n for n, layer in policy.overrides.items() if layer.activation is None}
    assert floats == set(CHEAP_INPUTS)
    assert "decode1.conv" not in floats  # `sensitive` has it, `cheap` does not
    assert set(CHEAP_INPUTS) < set(SENSITIVE_INPUTS)


def test_each_method_is_a_strategy_over_the_closures() -> None:
    """What each method does is data: range search, BIQ learning (and QDrop's dropping), the
    global stage; PTQ4VM's switches belong to PTQ4VM only."""
    prof = PROFILES[Profile.FAST]
    minmax, brecq, qdrop = (strategy(m) for m in (Method.MINMAX, Method.BRECQ, Method.QDROP))
    assert (minmax.range_grid, minmax.reconstruction(prof, 0)) == (1, None)
    learned = [s.reconstruction(prof, 0) for s in (brecq, qdrop)]
    assert [None if r is None else r.drop_prob for r in learned] == [0.0, 0.5]
    assert not any(s.has_global_stage for s in (minmax, brecq, qdrop))
    ptq4vm = strategy(Method.PTQ4VM)
    assert ptq4vm.has_global_stage
    assert ptq4vm.drop_prob == qdrop.drop_prob
    on_brecq = strategy(Method.PTQ4VM, Ptq4vmOptions(base=Base.BRECQ, gac=False, ofa=False))
    assert (on_brecq.drop_prob, on_brecq.has_global_stage) == (0.0, False)
    with pytest.raises(ValueError, match="apply to method ptq4vm"):
        strategy(Method.QDROP, Ptq4vmOptions())
