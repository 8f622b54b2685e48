"""The runtime bench end to end on the tiny model (its figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks.runtime import bench_runtime
from tokenfill.serve.launch import engine_missing

pytestmark = pytest.mark.slow


def test_runtime_bench_reports_both_runtimes(model_dir):
    pytest.importorskip("transformers")
    table = bench_runtime(model_dir, dtypes=("fp32",), prompt_lengths=(16, 40), new_tokens=8,
                          repeats=1, per_kind=2, max_tokens=8)
    assert "| tokenfill | fp32 |" in table and "| transformers | fp32 |" in table
    assert "prefill 16 tokens, tokens/s | prefill 40 tokens, tokens/s" in table
    assert "| yes |" in table  # same greedy tokens as transformers
    assert "| tokenfill, defaults (draft trees) |" in table
    if engine_missing("llama.cpp") is None:
        assert "| llama-server | f32 |" in table
        assert "| llama-server, --spec-type ngram-simple |" in table
    assert "Start-up: `tokenfill serve` launched" in table
    assert "| eager, fp32 (the default here) |" in table and "| torch.compile (inductor)" in table
    assert "| int8 weight-only |" in table
