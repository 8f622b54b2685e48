"""The HumanEval bench end to end on the tiny model, through the real `tokenfill batch`."""

from __future__ import annotations

import pytest

from benchmarks.humaneval import bench_humaneval
from tokenfill.paths import HUMANEVAL_SINGLE

pytestmark = pytest.mark.slow


def test_humaneval_bench_scores_batch_output(model_dir):
    if not HUMANEVAL_SINGLE.is_file():
        pytest.skip(f"benchmark data absent: {HUMANEVAL_SINGLE} (it lives in ../shared)")
    table = bench_humaneval(model_dir, limit=3)
    assert table.splitlines()[-1].startswith("| 3 |")
