"""Smoke test of experiments/bench_alfworld.py (tiny sizes; the real numbers come from running the script)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

pytestmark = pytest.mark.alfworld


def test_bench_runs_and_reports_identical_traces_and_a_perfect_planner(tmp_path: Path) -> None:
    from experiments.bench_alfworld import main

    results = main(
        [
            "--speed-games",
            "1",
            "--walk-steps",
            "3",
            "--skip-real",
            "--repeats",
            "1",
            "--expert-games",
            "6",
            "--experts",
            "planner",
            "--no-policy",
            "--out",
            str(tmp_path),
        ]
    )
    assert results["speed_summary"]["all_identical"]
    assert results["experts"]["planner"]["success"] == 1.0
    assert results["experts"]["distinct_games"] == 6
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["speed_summary"]["steps"] == results["speed_summary"]["steps"]
    assert "| planner | 6 | 100.0% |" in (tmp_path / "results.md").read_text()
    assert "handcoded" not in results["experts"]
