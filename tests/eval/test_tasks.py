"""The HumanEval harness: an oracle that answers the canonical solution passes, a wrong one fails."""

from __future__ import annotations

import pytest

from tests.eval.test_holes import FILES
from tokenfill.completion.engine import Completion
from tokenfill.eval import tasks as evaluation


class Oracle:
    """Answers each hole with the row's canonical solution (or a fixed wrong answer)."""

    def __init__(self, rows, wrong=False):
        self.answers = {(r["prompt"], r["suffix"]): r["canonical_solution"] for r in rows}
        self.wrong = wrong

    def complete(self, request):
        text = "    return None\n" if self.wrong else self.answers[(request.prefix, request.suffix)]
        return Completion(text, 1, "stop", 1, 1, 0.0, 0.0, 0.0)


HUMANEVAL = [n for n, t in evaluation.TASKS.items() if isinstance(t, evaluation.HumanEvalInfilling)]


@pytest.mark.parametrize("name", HUMANEVAL)
def test_canonical_solutions_pass_and_wrong_ones_fail(name):
    task = evaluation.TASKS[name]
    config = evaluation.EvalConfig(limit=6, seed=1, progress=False)
    try:
        rows = evaluation.humaneval_rows(task.filename, config.limit, config.seed)
    except evaluation.TaskSkipped as e:
        pytest.skip(str(e))
    good = task.run(Oracle(rows), config)
    assert good["rows"] == 6 and good["pass@1_rows"] == 1.0 and good["pass@1_problems"] == 1.0
    assert good["em_first_line"] == 1.0
    bad = task.run(Oracle(rows, wrong=True), config)
    assert bad["pass@1_rows"] < 1.0


def test_limit_draws_rows_by_seed():
    name = evaluation.TASKS["humaneval-single"].filename
    try:
        a = evaluation.humaneval_rows(name, 5, seed=1)
    except evaluation.TaskSkipped as e:
        pytest.skip(str(e))
    assert a == evaluation.humaneval_rows(name, 5, seed=1)
    assert a != evaluation.humaneval_rows(name, 5, seed=2)
    assert len(evaluation.humaneval_rows(name)) > 1000  # no limit: every row


def test_rows_are_grouped_by_problem():
    assert evaluation.humaneval_problem("SingleLineInfilling/HumanEval/12/L3") == "HumanEval/12"
    assert evaluation.humaneval_problem("RandomSpanInfillingLight/HumanEval/0/1") == "HumanEval/0"


@pytest.fixture
def engine(model_dir, monkeypatch):
    from tokenfill.completion.engine import Engine
    from tokenfill.eval import realcode

    monkeypatch.setattr(realcode, "files", lambda: list(FILES))
    return Engine.load(model_dir, dtype="fp32")


class MiddleOracle:
    """Answers each hole with the text that was there (or, `wrong`, with nothing)."""

    def __init__(self, files, wrong=False):
        self.texts, self.wrong = [text for _, text in files], wrong

    def complete(self, request):
        if self.wrong:
            return Completion("", 0, "stop", 1, 1, 0.0, 0.0, 0.0)
        text = next(t for t in self.texts if t.startswith(request.prefix)
                    and t.endswith(request.suffix)
                    and len(t) >= len(request.prefix) + len(request.suffix))
        middle = text[len(request.prefix):len(text) - len(request.suffix)]
        return Completion(middle, 1, "stop", 1, 1, 0.0, 0.0, 0.0)


def test_realcode_task_scores_every_kind(engine):
    config = evaluation.EvalConfig(limit=2, max_tokens=8, progress=False)
    result = evaluation.TASKS["realcode"].run(engine, config)
    assert set(result["kinds"]) == set(evaluation.holes.KINDS)
    assert all(scores["holes"] == 2 for scores in result["kinds"].values())
    right = evaluation.TASKS["realcode"].run(MiddleOracle(FILES), config)["kinds"]
    assert all(s["em_middle"] == s["em_first_line"] == s["parses"] == 1.0 for s in right.values())
    wrong = evaluation.TASKS["realcode"].run(MiddleOracle(FILES, wrong=True), config)["kinds"]
    assert all(s["em_middle"] == 0.0 and s["es_middle"] < 1.0 for s in wrong.values())


def test_latency_task_reports_percentiles(engine):
    result = evaluation.TASKS["latency"].run(engine, evaluation.EvalConfig(limit=1, max_tokens=4,
                                                                            progress=False))
    assert result["cursors"] == len(evaluation.holes.KINDS)
    assert 0 < result["ms_p50"] <= result["ms_p95"] <= result["ms_p99"]


def test_token_accuracy_agrees_with_real_greedy_decoding(engine):
    from tests.eval.test_holes import SOURCE
    from tokenfill.runtime.generate import generate

    spans, lexical = evaluation.TokenAccuracy.score_file(engine, SOURCE)
    assert 0 < len(spans) <= lexical
    ids = engine.tokenizer.encode(SOURCE)
    for first, last, right in spans:
        continuation = generate(engine.model, ids[:first], last - first + 1).tokens
        assert (continuation == ids[first:last + 1]) == right, (first, last)
        covered = engine.tokenizer.decode(ids[first:last + 1])
        assert covered.strip()  # each span covers the text of a lexical token
