"""``experiments.bench_oreo.summarise``: the table's numbers from the children's raw timings (no model needed)."""

from __future__ import annotations

import pytest

from experiments.bench_oreo import summarise


def test_summary_skips_the_warm_up_and_divides_by_sft() -> None:
    raw = {
        "sft": {"update_seconds": [9.0, 2.0, 4.0, 3.0], "load_average": [1.0, 2.5], "peak_rss_gb": 4.0},
        "oreo": {"update_seconds": [20.0, 6.0, 6.0, 9.0], "load_average": [3.0], "peak_rss_gb": 8.0},
        "oreo_shared": {"error": "Traceback ...\nRuntimeError: out of memory\n"},
    }
    summary = summarise(raw)
    assert summary["sft"]["median_update_seconds"] == 3.0  # median of 2, 4, 3: the first update is a warm-up
    assert summary["sft"]["max_load_average"] == 2.5
    assert summary["oreo"]["ratio_over_sft"] == pytest.approx(2.0)
    assert summary["oreo_shared"] == {"error": "RuntimeError: out of memory"}
