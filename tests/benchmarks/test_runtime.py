"""The runtime bench end to end on the tiny model (its figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks.runtime import bench_runtime

pytestmark = pytest.mark.slow


def test_runtime_bench_reports_both_runtimes(model_dir):
    pytest.importorskip("transformers")
    table = bench_runtime(model_dir, dtypes=("fp32",), prompt_len=16, new_tokens=8, repeats=1)
    assert "| tokenfill | fp32 |" in table and "| transformers | fp32 |" in table
    assert "| yes |" in table  # same greedy tokens as transformers
