"""The HumanEval harness: an oracle that answers the canonical solution passes, a wrong one fails."""

from __future__ import annotations

import pytest

from tokenfill import eval as evaluation
from tokenfill.completion import Completion


class Oracle:
    """Answers each hole with the row's canonical solution (or a fixed wrong answer)."""

    def __init__(self, rows, wrong=False):
        self.answers = {(r["prompt"], r["suffix"]): r["canonical_solution"] for r in rows}
        self.wrong = wrong

    def complete(self, prefix, suffix, max_tokens):
        text = "    return None\n" if self.wrong else self.answers[(prefix, suffix)]
        return Completion(text, 1, "stop", 1, 1, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", list(evaluation.TASKS))
def test_canonical_solutions_pass_and_wrong_ones_fail(name):
    task = evaluation.TASKS[name]
    config = evaluation.EvalConfig(limit=6, seed=1, progress=False)
    try:
        rows = task.rows(config)
    except evaluation.TaskSkipped as e:
        pytest.skip(str(e))
    good = task.run(Oracle(rows), config)
    assert good["rows"] == 6 and good["pass@1_rows"] == 1.0 and good["pass@1_problems"] == 1.0
    bad = task.run(Oracle(rows, wrong=True), config)
    assert bad["pass@1_rows"] < 1.0


def test_limit_draws_rows_by_seed():
    task = evaluation.TASKS["humaneval-single"]
    try:
        a = task.rows(evaluation.EvalConfig(limit=5, seed=1))
    except evaluation.TaskSkipped as e:
        pytest.skip(str(e))
    assert a == task.rows(evaluation.EvalConfig(limit=5, seed=1))
    assert a != task.rows(evaluation.EvalConfig(limit=5, seed=2))


def test_rows_are_grouped_by_problem():
    assert evaluation.humaneval_problem("SingleLineInfilling/HumanEval/12/L3") == "HumanEval/12"
    assert evaluation.humaneval_problem("RandomSpanInfillingLight/HumanEval/0/1") == "HumanEval/0"
