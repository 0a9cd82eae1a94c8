"""The saturation-safe int8 target (`--int8-target avx2`): its policy, the safety check computed
from an artifact's integers, AUTO's choice per CPU class, and exactness on AVX2 kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ptq4vm_core.artifact import read_manifest
from ptq4vm_core.artifact.layout import architecture
from ptq4vm_core.artifact.saturation import PAIR_BOUND, check_saturation, pair_sums
from ptq4vm_core.artifact.verify import verify
from ptq4vm_core.engine import EngineKind, cpu, load_engine, openvino_engine
from ptq4vm_core.engine import loader as engine_loader
from ptq4vm_core.engine.cache import cached_export
from ptq4vm_core.model import MattingNetwork
from ptq4vm_core.model.recipe import MODEL_NAME, dense_convs, rvm_policy
from ptq4vm_core.quant.spec import Int8Target, LayerPolicy, weight_spec
from tests.engine.conftest import tiny_artifact

ONE_LEVEL = 1 / 255
STEM = "backbone.features.0.0"


@pytest.fixture(scope="session")
def avx2_artifact(
    rvm: MattingNetwork, sample_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("avx2") / "artifact"
    return tiny_artifact(rvm, sample_clip, out, target=Int8Target.AVX2)


@pytest.fixture(scope="session")
def mislabelled_artifact(
    rvm: MattingNetwork, sample_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Labelled `avx2`, but the stem, a dense int8 conv, keeps 8-bit weights."""
    policy = rvm_policy("w8a8", target=Int8Target.AVX2)
    stem = policy.overrides[STEM]
    overrides = {**policy.overrides, STEM: LayerPolicy(weight_spec(8), stem.activation)}
    out = tmp_path_factory.mktemp("mislabelled") / "artifact"
    return tiny_artifact(
        rvm, sample_clip, out, target=Int8Target.AVX2, policy=replace(policy, overrides=overrides)
    )


def test_the_avx2_policy_puts_dense_int8_convs_on_7_bits() -> None:
    vnni, avx2 = rvm_policy("w8a8"), rvm_policy("w8a8", target=Int8Target.AVX2)
    convs = architecture(MODEL_NAME).convs
    assert dense_convs() == {name for name, conv in convs.items() if conv.dense}
    assert 0 < len(dense_convs()) < len(convs)  # RVM has depthwise convs too
    for name in convs:
        before, after = vnni.for_layer(name), avx2.for_layer(name)
        assert before is not None
        assert after is not None
        assert after.activation == before.activation  # activations as in W8A8
        expected = 7 if name in dense_convs() and before.activation is not None else 8
        assert after.weight.bits == expected, name
    # Float-input convs run in float: nothing to saturate, their weights keep 8 bits.
    mixed = rvm_policy("w8a8", float_inputs=("decode1.conv",), target=Int8Target.AVX2)
    layer = mixed.for_layer("decode1.conv")
    assert layer is not None
    assert layer.weight.bits == 8
    # 4-bit weights are safe already; the first and last layers' 8 bits become 7.
    w4 = rvm_policy("w4a8", target=Int8Target.AVX2)
    assert {w4.for_layer(n).weight.bits for n in dense_convs()} == {4, 7}  # type: ignore[union-attr]


def test_safety_is_computed_from_the_integers(
    avx2_artifact: Path, w8a8_artifact: Path, mislabelled_artifact: Path
) -> None:
    assert read_manifest(avx2_artifact).int8_target is Int8Target.AVX2
    assert read_manifest(w8a8_artifact).int8_target is Int8Target.VNNI
    verified = verify(avx2_artifact)
    for name in dense_convs():
        assert int(verified.integers[name].abs().max()) <= 63, name
    report = check_saturation(avx2_artifact)
    assert report.safe
    assert report.worst is not None
    assert report.worst[1] <= PAIR_BOUND
    # Depthwise convs keep their 8-bit grid (MinMax puts a channel's largest weight at 127).
    depthwise = set(verified.integers) - dense_convs()
    assert max(int(verified.integers[n].abs().max()) for n in depthwise) > 63
    # MinMax puts 127 in every channel of an 8-bit conv: its pairs pass the bound.
    assert not check_saturation(w8a8_artifact).safe
    mislabelled = check_saturation(mislabelled_artifact)
    assert read_manifest(mislabelled_artifact).int8_target is Int8Target.AVX2  # the label lies
    assert not mislabelled.safe
    assert mislabelled.unsafe == (STEM,), mislabelled
    assert STEM in mislabelled.reason()


def test_pair_sums_take_the_two_largest_magnitudes() -> None:
    import torch

    q = torch.tensor([[[[1, -64]], [[64, 3]]], [[[-5, 0]], [[0, 7]]]])  # [2, 2, 1, 2]
    assert pair_sums(q).tolist() == [128, 12]
    assert pair_sums(torch.tensor([[9], [-4]])).tolist() == [9, 4]


def test_auto_chooses_per_cpu_class(
    monkeypatch: pytest.MonkeyPatch,
    avx2_artifact: Path,
    w8a8_artifact: Path,
    mislabelled_artifact: Path,
    use_engine_cache: Path,
) -> None:
    monkeypatch.delenv("PTQ4VM_INT8_FLOAT_PRECISION", raising=False)
    monkeypatch.setattr(engine_loader, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(engine_loader, "int8_dot_exact", lambda: False)  # AVX2-only x86
    assert load_engine(str(avx2_artifact)).name == "openvino-int8-w8a8"
    assert load_engine(str(avx2_artifact), EngineKind.OPENVINO).name == "openvino-int8-w8a8"
    assert load_engine(str(w8a8_artifact)).name == "ort-int8-w8a8-u8u8"
    for unsafe in (w8a8_artifact, mislabelled_artifact):
        with pytest.raises(openvino_engine.OpenVinoUnavailableError, match="not saturation-safe"):
            load_engine(str(unsafe), EngineKind.OPENVINO)
    assert load_engine(str(mislabelled_artifact)).name == "ort-int8-w8a8-u8u8"
    monkeypatch.setattr(engine_loader, "int8_dot_exact", lambda: True)  # VNNI
    for artifact in (avx2_artifact, w8a8_artifact, mislabelled_artifact):
        assert load_engine(str(artifact)).name == "openvino-int8-w8a8"
    monkeypatch.setattr(engine_loader, "cpu_has_bf16", lambda: True)  # VNNI + bf16 (Zen 4)
    for artifact in (avx2_artifact, w8a8_artifact):
        engine = load_engine(str(artifact))
        assert isinstance(engine, openvino_engine.OpenVinoEngine)
        assert (engine.name, engine.precision) == ("openvino-int8-w8a8-bf16", "bf16")
    # The benchmarks' f32 rows on the same CPU.
    engine = load_engine(str(w8a8_artifact), EngineKind.OPENVINO, int8_precision="f32")
    assert isinstance(engine, openvino_engine.OpenVinoEngine)
    assert (engine.name, engine.precision) == ("openvino-int8-w8a8", "f32")


def test_the_int8_float_precision_follows_the_cpu_and_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bf16 for an int8 graph's float parts where the CPU has bf16 units (faster at every
    size, same quality: docs/benchmarks/engine-vnni.md); PTQ4VM_INT8_FLOAT_PRECISION=f32
    keeps f32 there; bf16 is never asked of a CPU without it."""
    for has, auto in ((True, "bf16"), (False, "f32")):
        monkeypatch.setattr(engine_loader, "cpu_has_bf16", lambda has=has: has)
        for setting, want in ((None, auto), ("auto", auto), ("F32", "f32"), ("bf16", auto)):
            if setting is None:
                monkeypatch.delenv("PTQ4VM_INT8_FLOAT_PRECISION", raising=False)
            else:
                monkeypatch.setenv("PTQ4VM_INT8_FLOAT_PRECISION", setting)
            assert engine_loader.int8_float_precision() == want, (has, setting)
    monkeypatch.setenv("PTQ4VM_INT8_FLOAT_PRECISION", "fp16")
    with pytest.raises(ValueError, match="expected auto, f32 or bf16"):
        engine_loader.int8_float_precision()


def test_an_onednn_cap_below_bf16_turns_bf16_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO lists BF16 among its capabilities under ONEDNN_MAX_CPU_ISA=AVX2 too; the
    engines must not ask for bf16 there (it would be emulated, and capped runs stand for CPUs
    without it)."""
    has = "BF16" in openvino_engine.openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for cap, want in (("AVX2", False), ("avx512_core_vnni", False), ("AVX512_CORE_BF16", has)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert openvino_engine.cpu_has_bf16() is want, cap


def test_cpu_class_and_default_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for flags, label, target in (
        ({"avx2", "avx512_vnni", "avx512_bf16"}, "VNNI +bf16", Int8Target.VNNI),  # Zen 4
        ({"avx2", "fma"}, "AVX2-only", Int8Target.AVX2),  # Zen 3
    ):
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert (cpu.cpu_class(), cpu.default_int8_target()) == (label, target)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.cpu_class().startswith("VNNI capped to AVX2")
    assert cpu.default_int8_target() is Int8Target.AVX2
    assert cpu.cpu_model()


EXACTNESS = """
import json, sys
from pathlib import Path
import numpy as np
from ptq4vm_core.engine import load_engine
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.io.video import iter_frames
artifact, clip = sys.argv[1:3]
sim, deployed = load_engine(artifact, "sim"), load_engine(artifact, "openvino")
frames = [f for _, f in zip(range(4), iter_frames(Path(clip)))]
diffs = []
for negate in (False, True):
    state_a = state_b = None
    for frame in frames:
        src = frames_to_batch([255 - frame if negate else frame])
        a, b = deployed.infer(src, state_a, 1.0), sim.infer(src, state_b, 1.0)
        state_a, state_b = a.state, b.state
        diffs.append(float(np.abs(a.pha - b.pha).mean()))
print(json.dumps({"engine": deployed.name, "diffs": diffs}))
"""


def test_the_avx2_target_is_exact_on_avx2_kernels(
    avx2_artifact: Path, sample_clip: Path, engine_cache: Path
) -> None:
    """On oneDNN's AVX2 kernels (capped so on a VNNI CPU; native on an AVX2-only one) OpenVINO
    mattes the avx2 artifact, bright negated frames included, as its simulation does: the
    frames where a W8A8 artifact moves by tens of levels (test_openvino_int8_without_vnni_
    saturates)."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PTQ4VM_HOME": str(engine_cache.parent)}
    run = subprocess.run(
        [sys.executable, "-c", EXACTNESS, str(avx2_artifact), str(sample_clip)],
        check=True, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["engine"] == "openvino-int8-w8a8"
    diffs = result["diffs"]
    assert sum(diffs) / len(diffs) <= 0.5 * ONE_LEVEL, result
    assert max(diffs) <= ONE_LEVEL, result


# 26 s: builds every peer of benchmarks/engine.py; a benchmark's own check, in test-slow.
@pytest.mark.slow
def test_the_engine_benchmark_builds_its_peers_without_vnni(
    monkeypatch: pytest.MonkeyPatch,
    avx2_artifact: Path,
    w8a8_artifact: Path,
    use_engine_cache: Path,
) -> None:
    """benchmarks/engine.py on a CPU without VNNI: every peer is built, the W8A8 artifact's
    OpenVINO rows (and an 8-bit `quantize_static` graph's) are timed and marked, the AVX2
    target's are exact. The `quantize_static` graph stands in as the W8A8 export (8-bit
    weights): making ORT's own takes minutes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import engine as bench_engine

    graph = cached_export(w8a8_artifact).full_resolution
    monkeypatch.setattr(bench_engine, "quantize_static_model", lambda: graph)
    monkeypatch.setattr(bench_engine, "int8_dot_exact", lambda: False)
    monkeypatch.setattr(engine_loader, "int8_dot_exact", lambda: False)
    engines, marks = bench_engine.peers(w8a8_artifact, avx2_artifact, None, mediapipe=False)
    assert {"fp32", "ov_fp32", "qs_ort", "qs_ov", "ours_ort", "ours_ov", "avx2_ort", "avx2_ov",
            "ours_ov_alpha", "avx2_ov_alpha"} <= set(engines)  # fmt: skip
    assert set(marks) == {"qs_ort", "qs_ov", "ours_ov", "ours_ov_alpha"}
    assert engines["ours_ort"].name == "ort-int8-w8a8-u8u8"
    assert engines["ours_ov"].name == "openvino-int8-w8a8-saturating"
    assert engines["avx2_ov"].name == "openvino-int8-w8a8"
    rows = bench_engine.speed({k: engines[k] for k in ("fp32", "avx2_ov")}, rounds=1, frames=2)
    assert all(r["avx2_ov_fps"] > 0 for r in rows)
