"""The speculative benchmark runs end to end (tiny model, synthetic files) and reports each kind."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import speculative
from tests.eval.test_holes import FILES
from tokenfill.eval import realcode
from tokenfill.train.ngrams import build_beside

pytestmark = pytest.mark.slow


def test_report_compares_speculative_and_plain(monkeypatch, model_dir, tmp_path):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    plot = tmp_path / "plot.png"
    report = speculative.run(model_dir, per_kind=2, max_tokens=8, compare_transformers=False,
                                   progress=False, plot=plot)
    for kind in ("block-body", "multi-line", "all"):
        assert f"| {kind} | " in report
    rows = [line for line in report.splitlines() if line.startswith("| block-body | 2 |")]
    assert rows and "| 2/2 |" in rows[0]  # greedy outputs identical
    assert "Drafters' memory" in report and plot.stat().st_size > 0
    assert "| tokens in the pass | 1 | 2 |" in report and "ceiling from pass costs" in report
    assert "What the corpus table adds" not in report  # the tiny model has none


def test_report_shows_what_the_corpus_table_adds(monkeypatch, model_dir, tmp_path):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    build_beside(model, [text for _, text in FILES], min_count=1, progress=False)
    report = speculative.run(model, per_kind=2, max_tokens=8, compare_transformers=False,
                                   progress=False, plot=None)
    assert "What the corpus table adds" in report
    assert any(line.startswith("| block-body | ") and line.count("x") >= 2 and " / " in line
               for line in report.split("What the corpus table adds")[1].splitlines())


def test_cost_interpolates_between_the_sizes_measured():
    costs = {1: 5.0, 2: 7.0, 4: 8.0, 8: 10.0}
    assert speculative.cost_at(costs, 1) == 5.0
    assert speculative.cost_at(costs, 3) == 7.5
    assert speculative.cost_at(costs, 8) == 10.0
    assert speculative.cost_at(costs, 12) == 12.0  # past the last: the last slope
