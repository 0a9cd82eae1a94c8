"""`benchmarks/load.py --efficiency --slices`: the interleaved measurement runs end to end
against a real server and reports what it measured (slow: it starts `ptq4vm serve`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptq4vm_core.engine.cpu import cpu_class

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_interleaved_efficiency_reports_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "eff"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "load.py"), "--efficiency", "--slices", "2",
        "--slice-seconds", "1", "--model", "fp32", "--size", "128x72", "--downsample", "1",
        "--saturate", "1", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    (part,) = report["efficiency"].values()
    assert part["interleaved"] is True
    assert [s["sessions"] for s in part["steps"]] == [1, 2]
    for step in part["steps"]:
        assert len(step["served_fps_slices"]) == 2
        assert len(step["bench_fps_slices"]) == 3  # a bench slice on each side of each serve
        assert step["fps"] > 0
        assert step["bench_fps"] > 0
        assert step["pooled"] == pytest.approx(step["fps"] / step["bench_fps"], rel=0.01)
        assert step["ms"]["frames"] > 0  # the server's own histograms moved
    assert part["efficiency"] == max(s["pooled"] for s in part["steps"])
    assert f"({cpu_class()})" in part["machine"]  # the report names the CPU's class
    assert "Serving efficiency" in out.with_suffix(".md").read_text()
