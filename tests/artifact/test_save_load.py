from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from safetensors import safe_open
from torch import nn

from ptq4vm_core.artifact import (
    MANIFEST_FILE,
    TENSORS_FILE,
    ArtifactError,
    Storage,
    load_artifact,
    read_manifest,
    save_artifact,
    update_metrics,
    verify_artifact,
)
from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP, sha256_file
from ptq4vm_core.calib.calibrate import CalibrationResult
from ptq4vm_core.calib.data import CalibrationSet
from ptq4vm_core.calib.methods import PROFILES, Profile
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.quant.adaround import AdaRoundQuantizer
from ptq4vm_core.quant.mode import QuantMode
from ptq4vm_core.quant.model import quant_layers
from ptq4vm_core.quant.modules import QuantConv2d
from ptq4vm_core.quant.quantizer import UniformQuantizer
from ptq4vm_core.quant.site import ActivationSite, QuantActivation
from ptq4vm_core.quant.spec import QuantPolicy
from tests.artifact.conftest import run_frames


@pytest.mark.parametrize("bits", ["w8a8", "w4a4"])
def test_loaded_model_is_bit_identical(
    bits: str, request: pytest.FixtureRequest, clip_frames: list[NDArray[np.uint8]]
) -> None:
    result: CalibrationResult = request.getfixturevalue(bits)
    path: Path = request.getfixturevalue(f"{bits[:2]}{bits[2:]}_dir")
    loaded = load_artifact(path).model
    for layer_name, layer in quant_layers(loaded).items():
        saved = quant_layers(result.model)[layer_name]
        assert torch.equal(layer.quantized_weight(), saved.quantized_weight()), layer_name
    for saved_out, loaded_out in zip(
        run_frames(result.model, clip_frames), run_frames(loaded, clip_frames), strict=True
    ):
        assert torch.equal(saved_out.pha, loaded_out.pha)
        assert torch.equal(saved_out.fgr, loaded_out.fgr)
        for a, b in zip(saved_out.state, loaded_out.state, strict=True):
            assert torch.equal(a, b)


def test_loaded_model_is_quantized_eval_no_grad(w8a8: CalibrationResult, w8a8_dir: Path) -> None:
    artifact = load_artifact(w8a8_dir)
    model = artifact.model
    assert isinstance(model, MattingNetwork)
    assert artifact.path == w8a8_dir
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    quantizers = [m for m in model.modules() if isinstance(m, UniformQuantizer | AdaRoundQuantizer)]
    assert quantizers
    assert all(q.mode is QuantMode.QUANTIZED for q in quantizers)
    assert list(quant_layers(model)) == list(quant_layers(w8a8.model))
    sites = [n for n, m in model.named_modules() if isinstance(m, QuantActivation)]
    assert sites == list(artifact.manifest.sites)
    assert sites  # RVM quantizes its GRU states


def test_integer_storage_and_sizes(w8a8_dir: Path, w4a4_dir: Path) -> None:
    w8, w4 = read_manifest(w8a8_dir), read_manifest(w4a4_dir)
    assert {e.storage for e in w8.layers.values()} == {Storage.INT8}
    assert not any(e.packed for e in w8.layers.values())
    packed = [n for n, e in w4.layers.items() if e.packed]
    assert packed
    assert all(w4.layers[n].weight_bits == 4 for n in packed)
    # the first and last layers stay at 8 bits (rvm_policy)
    assert {n for n, e in w4.layers.items() if not e.packed} == set(w4.policy.overrides)
    with (
        safe_open(w8a8_dir / TENSORS_FILE, "pt") as f8,
        safe_open(w4a4_dir / TENSORS_FILE, "pt") as f4,
    ):
        for name, entry in w8.layers.items():
            q = f8.get_tensor(f"{name}.weight_q")
            assert q.dtype == torch.int8
            assert tuple(q.shape) == entry.weight_shape
            assert f8.get_tensor(f"{name}.weight_scale").dtype == torch.float32
            assert f8.get_tensor(f"{name}.weight_zero_point").dtype == torch.int32
            if entry.act_bits is not None:  # else its input is quantized part by part
                assert f8.get_tensor(f"{name}.act_zero_point").shape == (1,)
        for name in packed:
            q = f4.get_tensor(f"{name}.weight_q")
            numel = int(np.prod(w4.layers[name].weight_shape))
            assert q.dtype == torch.uint8
            assert tuple(q.shape) == ((numel + 1) // 2,)
    size8 = (w8a8_dir / TENSORS_FILE).stat().st_size
    size4 = (w4a4_dir / TENSORS_FILE).stat().st_size
    assert size4 < 0.6 * size8, (size4, size8)


def test_manifest_contents(w8a8: CalibrationResult, w8a8_dir: Path, sample_clip: Path) -> None:
    manifest = verify_artifact(w8a8_dir)
    raw = json.loads((w8a8_dir / MANIFEST_FILE).read_text())
    assert manifest.raw == raw
    assert raw["format"] == "ptq4vm-artifact"
    assert raw["version"] == 1
    assert raw["model"] == "rvm_mobilenetv3"
    assert raw["base_weights_sha256"] == RVM_WEIGHTS.sha256
    assert (raw["method"], raw["bits"], raw["profile"]) == ("minmax", "w8a8", "fast")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["created"])
    stamp = raw["created"].replace("-", "").replace(":", "")
    assert raw["version_name"] == f"ptq4vm-w8a8-{stamp}"
    assert QuantPolicy.from_dict(raw["policy"]) == w8a8.policy
    assert manifest.policy == w8a8.policy
    clips = raw["calibration"]["clips"]
    assert [c["sha256"] for c in clips] == [sha256_file(sample_clip)]
    # What conftest asked for: the sample clip (no ground truth), 4 frames as 2 sequences of 2,
    # fitted to 64 px on the long side (176x144 -> 64x52) and cropped to multiples of 16 (64x48),
    # MinMax (no reconstruction) on the fast profile.
    assert raw["calibration"] == {
        "clips": [{"path": str(sample_clip), "sha256": SAMPLE_CLIP.sha256, "ground_truth": False}],
        "sequences": 2, "seq_len": 2, "size": [64, 48], "seed": 0,
    }  # fmt: skip
    assert raw["files"] == {TENSORS_FILE: sha256_file(w8a8_dir / TENSORS_FILE)}
    assert raw["metrics"] == {}
    assert raw["config"] == {"profile": PROFILES[Profile.FAST].to_dict(), "reconstruction": None}
    timings = raw["timings"]
    assert set(timings) == {"setup", "biq", "total"}
    assert all(math.isfinite(t) and t >= 0 for t in timings.values()), timings
    assert timings["total"] >= timings["setup"] + timings["biq"]
    assert [r["name"] for r in raw["reports"]] == [r.name for r in w8a8.reports]
    assert list(raw["layers"]) == list(quant_layers(w8a8.model))
    assert sorted(p.name for p in w8a8_dir.iterdir()) == [MANIFEST_FILE, TENSORS_FILE]


def test_custom_version_name(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    out = save_artifact(w8a8, calib_data, tmp_path / "a", name="rvm-int8.v2")
    assert read_manifest(out).version_name == "rvm-int8.v2"
    with pytest.raises(ArtifactError, match="version name"):
        save_artifact(w8a8, calib_data, tmp_path / "b", name="../escape")
    assert not (tmp_path / "b").exists()


class Snapshot(NamedTuple):
    state: dict[str, torch.Tensor]
    modes: list[QuantMode]
    grads: list[bool]
    training: bool


def _snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        state={k: v.clone() for k, v in model.state_dict().items()},
        modes=[
            m.mode for m in model.modules() if isinstance(m, UniformQuantizer | AdaRoundQuantizer)
        ],
        grads=[p.requires_grad for p in model.parameters()],
        training=model.training,
    )


def test_saving_leaves_the_model_unchanged(
    w4a4: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    before = _snapshot(w4a4.model)
    save_artifact(w4a4, calib_data, tmp_path / "a")
    after = _snapshot(w4a4.model)
    assert before.modes == after.modes
    assert before.grads == after.grads
    assert before.training == after.training
    assert before.state.keys() == after.state.keys()
    for key, value in before.state.items():
        assert torch.equal(value, after.state[key]), key


def test_update_metrics(w8a8_copy: Path) -> None:
    updated = update_metrics(w8a8_copy, {"mad": 1.25, "per_clip": {"a": 2}})
    assert updated.metrics == {"mad": 1.25, "per_clip": {"a": 2}}
    update_metrics(w8a8_copy, {"mad": 1.5, "mse": 0.1})
    manifest = verify_artifact(w8a8_copy)  # still verifies: metrics are outside the digest
    assert manifest.metrics == {"mad": 1.5, "per_clip": {"a": 2}, "mse": 0.1}
    assert sorted(p.name for p in w8a8_copy.iterdir()) == [MANIFEST_FILE, TENSORS_FILE]
    with pytest.raises(ArtifactError, match="'bad' is nan"):
        update_metrics(w8a8_copy, {"bad": float("nan")})
    with pytest.raises(ArtifactError, match="not JSON-able"):
        update_metrics(w8a8_copy, {"bad": object()})
    assert read_manifest(w8a8_copy).metrics == manifest.metrics


def _weight_only_keep_fp(result: CalibrationResult) -> CalibrationResult:
    """The w8a8 model turned weight-only (float activations, GRU states unquantized) with
    `project_mat` back in float: exercises float tensors and the no-activation layout."""
    policy = QuantPolicy.from_bits(
        8,
        None,
        first_last_8bit=("backbone.features.0.0", "refiner.conv3"),
        keep_fp=frozenset({"project_mat"}),
    )
    model = copy.deepcopy(result.model)
    for name, layer in quant_layers(model).items():
        layer_policy = policy.for_layer(name)
        if layer_policy is not None:
            layer.policy = layer_policy
            layer.act_quantizer = None
    qconv = model.project_mat
    assert isinstance(qconv, QuantConv2d)
    assert qconv.bias is not None
    assert qconv.kernel_size == (1, 1)
    conv = nn.Conv2d(qconv.in_channels, qconv.out_channels, 1, bias=True)
    conv.weight = nn.Parameter(qconv.weight.clone(), requires_grad=False)
    conv.bias = nn.Parameter(qconv.bias.clone(), requires_grad=False)
    model.project_mat = conv
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, QuantActivation):
                setattr(parent, child_name, ActivationSite())
    return CalibrationResult(
        model, policy, result.method, result.bits, result.profile, result.reports
    )


def test_weight_only_with_float_layer(
    w8a8: CalibrationResult,
    calib_data: CalibrationSet,
    tmp_path: Path,
    clip_frames: list[NDArray[np.uint8]],
) -> None:
    variant = _weight_only_keep_fp(w8a8)
    path = save_artifact(variant, calib_data, tmp_path / "a")
    artifact = load_artifact(path)
    manifest = artifact.manifest
    assert set(manifest.float_tensors) == {"project_mat.weight", "project_mat.bias"}
    assert manifest.sites == {}
    assert all(e.act_bits is None for e in manifest.layers.values())
    assert "project_mat" not in manifest.layers
    assert isinstance(artifact.model.project_mat, nn.Conv2d)
    with safe_open(path / TENSORS_FILE, "pt") as f:
        assert not [k for k in f.keys() if k.endswith(("act_scale", "act_zero_point"))]  # noqa: SIM118
    for a, b in zip(
        run_frames(variant.model, clip_frames, 2),
        run_frames(artifact.model, clip_frames, 2),
        strict=True,
    ):
        assert torch.equal(a.pha, b.pha)
        assert torch.equal(a.fgr, b.fgr)


def test_policy_mismatch_is_refused_at_save(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    wrong = CalibrationResult(
        w8a8.model, QuantPolicy(4, 8), w8a8.method, w8a8.bits, w8a8.profile, w8a8.reports
    )
    with pytest.raises(ArtifactError, match="the policy says"):
        save_artifact(wrong, calib_data, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []
