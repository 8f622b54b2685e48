"""The benchmark commands run end to end on the tiny model (figures themselves are not asserted)."""

from __future__ import annotations

import pytest

from tokenfill import bench
from tokenfill.checkpoint import BUNDLED_MODEL


def test_runtime_bench_reports_both_runtimes(model_dir):
    pytest.importorskip("transformers")
    table = bench.bench_runtime(model_dir, dtypes=("fp32",), prompt_len=16, new_tokens=8, repeats=1)
    assert "| tokenfill | fp32 |" in table and "| transformers | fp32 |" in table
    assert "| yes |" in table  # same greedy tokens as transformers


def test_humaneval_bench_scores_batch_output(model_dir):
    if not bench.HUMANEVAL_SINGLE.is_file():
        pytest.skip(f"benchmark data absent: {bench.HUMANEVAL_SINGLE} (it lives in ../shared)")
    table = bench.bench_humaneval(model_dir, limit=3)
    assert table.splitlines()[-1].startswith("| 3 |")


def test_first_line_ignores_surrounding_whitespace():
    assert bench.first_line("    return x  \n    y") == "return x"


def test_a_bench_names_its_model_as_it_must_be_given_again(tmp_path):
    assert bench.model_option(BUNDLED_MODEL) == ""  # the default: nothing to give
    assert bench.model_option(tmp_path / "other") == f" --model {tmp_path / 'other'}"
