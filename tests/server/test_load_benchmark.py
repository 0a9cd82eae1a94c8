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
        low, high = step["pooled_ci95"]
        assert low <= step["pooled"] <= high  # the interval holds the pooled figure
    assert part["efficiency"] == max(s["pooled"] for s in part["steps"])
    assert f"({cpu_class()})" in part["machine"]  # the report names the CPU's class
    assert part["efficiency_ci95"] == max(part["steps"], key=lambda s: s["pooled"])["pooled_ci95"]
    assert "Serving efficiency" in out.with_suffix(".md").read_text()
    assert "bootstrap interval" in out.with_suffix(".md").read_text()


def test_pooled_interval_brackets_the_pooled_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import load

    serves = [(40, 2.0), (36, 2.0), (44, 2.0), (38, 2.0)]
    benches = [(44, 2.0), (42, 2.0), (46, 2.0), (43, 2.0), (45, 2.0)]
    pooled = (158 / 8.0) / (220 / 10.0)
    low, high = load.pooled_interval(serves, benches)
    assert low < pooled < high
    assert high - low < 0.2
    # Identical slices leave no doubt: the interval closes on the ratio.
    same_low, same_high = load.pooled_interval([(40, 2.0)] * 4, [(50, 2.0)] * 5)
    assert same_low == pytest.approx(0.8)
    assert same_high == pytest.approx(0.8)
