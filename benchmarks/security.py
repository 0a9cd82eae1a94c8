"""Witness latency under each attack of tests/security (issue 18), as a benchmark.

The security tests check refusals, liveness, memory and that the witness session is served
throughout; they do not judge its latency, which a shared machine's load moves more than any
attack does. This command runs them with PTQ4VM_SECURITY_REPORT set and renders the figures
they record: per attack, the server's RSS growth and the witness's p99 over the 40 frames
before the attack ("unloaded") and during it, with the ratio that issue 18's acceptance
bounds by 2. Run it on a quiet machine: the ratio of two noisy p99s means little otherwise.

Usage: python benchmarks/security.py [--out docs/benchmarks/security] [--rounds N]

With --rounds N the suite runs N times; each attack's figures are the round with the median
ratio. Writes OUT.json (every round) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RATIO_BOUND = 2.0


def run_round(report: Path) -> dict[str, Any]:
    env = {**os.environ, "PTQ4VM_SECURITY_REPORT": str(report)}
    command = [sys.executable, "-m", "pytest", "tests/security", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if not report.exists():
        raise SystemExit(f"tests/security wrote no figures (exit {done.returncode})")
    figures: dict[str, Any] = json.loads(report.read_text())
    figures["tests_passed"] = done.returncode == 0
    return figures


def ratio(row: dict[str, Any]) -> float:
    unloaded = float(row["witness_p99_unloaded_ms"])
    return float(row["witness_p99_ms"]) / unloaded if unloaded > 0 else float("inf")


def median_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for figures in rounds:
        for row in figures["rows"]:
            by_attack.setdefault(row["attack"], []).append(row)
    chosen = []
    for rows in by_attack.values():
        rows = sorted(rows, key=ratio)
        chosen.append(rows[len(rows) // 2])
    return chosen


def render(rounds: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    worst = max(rows, key=ratio)
    lines = [
        "# Witness latency under hostile clients",
        "",
        "`python benchmarks/security.py` (the attacks of `tests/security/` against a real",
        "`ptq4vm serve`, a 176x144 FP32 witness session streaming in lockstep meanwhile).",
        f"Rounds: {len(rounds)}; tests passed in every round: "
        f"{all(r['tests_passed'] for r in rounds)}. Per attack, the round with the median ratio.",
        "",
        f"Attacks: {len(rows)}; largest RSS growth "
        f"{max(r['rss_growth_mib'] for r in rows):.1f} MiB (bound 300 MiB); worst witness p99 "
        f"ratio {ratio(worst):.2f}x its unloaded p99 ({worst['attack']}; issue 18 bounds it "
        f"by {RATIO_BOUND:g}x).",
        "",
        "| attack | RSS growth (MiB) | witness p99 unloaded (ms) | during (ms) | ratio | "
        f"<= {RATIO_BOUND:g}x |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = ratio(row)
        lines.append(
            f"| {row['attack']} | {row['rss_growth_mib']:.1f} | "
            f"{row['witness_p99_unloaded_ms']:.1f} | {row['witness_p99_ms']:.1f} | "
            f"{r:.2f} | {'yes' if r <= RATIO_BOUND else 'no'} |"
        )
    lines += [
        "",
        "The unloaded p99 is measured over the 40 witness frames just before each attack, so",
        "load from other processes on the machine moves both columns; compare the ratio only",
        "from a quiet machine.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "security")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            rounds.append(run_round(Path(tmp) / f"round-{i}.json"))
    rows = median_rows(rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"rounds": rounds, "median": rows}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(render(rounds, rows))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
