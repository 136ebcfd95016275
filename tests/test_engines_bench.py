"""experiments/bench_engines.py end to end on a tiny model (transformers backend, tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from agents.engines.testing import save_tiny_model  # noqa: E402
from experiments.bench_engines import main  # noqa: E402


def test_bench_engines_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "bench.json"
    args = ["--backends", "hf", "--model", str(folder), "--batch-sizes", "1", "2", "--max-new-tokens", "4"]
    args += ["--branches", "2", "--prefix-tokens", "40", "--overhead-batch", "2", "--threads", "1"]
    main([*args, "--out", str(out)])
    result = json.loads(out.read_text())
    hf = result["backends"]["hf"]
    assert [(r["batch"], r["mode"]) for r in hf["throughput"]] == [
        (1, "greedy"),
        (1, "sample"),
        (2, "greedy"),
        (2, "sample"),
    ]
    assert all(r["tok_s"] > 0 for r in hf["throughput"])
    assert hf["startup_s"] > 0 and hf["peak_rss_mb"]["self"] > 0
    assert hf["shared_prefix"]["prefix_tokens"] >= 40 and hf["overhead"]["direct_tok_s"] > 0
    assert "tok/s B=2 sample" in capsys.readouterr().out
