"""One scorer for every benchmark: first line, middle, parse."""

from __future__ import annotations

from tokenfill.eval.score import first_line, parses, same_first_line, score_middle
from tokenfill.eval.stats import percentile


def test_first_line_keeps_its_white_space_and_the_match_ignores_it():
    assert first_line("    return x  \n    y") == "    return x  "
    assert same_first_line("  return x\nmore", "return x  ")
    assert not same_first_line("return y", "return x")


def test_score_middle_on_a_hole():
    got = score_middle("x + 1)\n", "x + 1)\n", "print(", "")
    assert got == {"em_first_line": True, "es_first_line": 1.0, "em_middle": True,
                   "es_middle": 1.0, "parses": True, "too_short": False, "runs_on": False}
    bad = score_middle("x +", "x + 1)", "print(", "\n")
    assert not bad["em_middle"] and not bad["parses"] and 0 < bad["es_middle"] < 1


def test_parses_and_percentile():
    assert parses("def f():\n    return 1\n") and not parses("def f(:\n")
    assert percentile([3, 1, 2], 0.5) == 2 and percentile([], 0.5) != percentile([], 0.5)


def test_too_short_and_runs_on():
    assert score_middle("re", "return x\n", "", "")["too_short"]
    assert not score_middle("return", "return x\n", "", "")["too_short"]
    assert score_middle("return x\ny = 1\n", "return x\n", "", "")["runs_on"]
    assert not score_middle("return x\n\n", "return x\n", "", "")["runs_on"]
