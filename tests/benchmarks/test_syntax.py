"""The syntax benchmark runs end to end (tiny model, synthetic files) and scores both runs."""

from __future__ import annotations

import pytest

from benchmarks import syntax
from tests.eval.test_holes import FILES
from tokenfill.eval import realcode

pytestmark = pytest.mark.slow


def test_report_compares_raw_and_syntax_aware(monkeypatch, model_dir):
    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    report = syntax.run(model_dir, per_kind=2, max_tokens=8, progress=False)
    for kind in (*syntax.KINDS, "all"):
        for label in ("raw", "syntax"):
            assert f"| {kind} | {label} | " in report
    assert "Monitor (jedi) on 2 dot-identifier holes" in report


def test_duplicates_counts_only_what_the_gold_does_not_repeat():
    assert syntax.duplicates("x)):", "x", "):\n    pass\n")
    assert syntax.duplicates("x):\n    pass\n\ny = 1", "x", "):\n    pass\n")  # raw runs on
    assert not syntax.duplicates("x", "x", "):\n")
    assert syntax.duplicates("a = 1\n    return a\n", "a = 1\n", "    return a\n")
    assert not syntax.duplicates("f(x)", "f(x)", ")\n")  # the gold ends the same way
